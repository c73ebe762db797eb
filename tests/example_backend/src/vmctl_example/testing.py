"""The example backend's contract-suite harness, registered in the ``vmctl.harnesses`` entry point group.

``pytest --vmctl-backend=example`` finds it there and runs vmctl's contract suite against it.
"""

from __future__ import annotations

from pathlib import Path

import vmctl
from vmctl.testing import GuestProbe, Harness

from vmctl_example._backend import ExampleHypervisor, ExampleMachine


class ExampleProbe(GuestProbe):
    """Looks into the toy guest through the machine's own test hooks."""

    def __init__(self, vm: ExampleMachine) -> None:
        self.vm = vm

    def ready(self) -> bool:
        return self.vm.state is vmctl.State.RUNNING

    def counter(self) -> int:
        return self.vm.guest_counter()

    def power_button_presses(self) -> int:
        return self.vm.guest().presses

    def boots(self) -> int:
        return self.vm.guest().boots


class ExampleHarness(Harness):
    id = "example"
    backend = "example"
    boot_timeout = 5
    #: machines live in one connection: no other process can see them
    multi_process = False
    #: the guest is a toy, not a real one
    real_guest = False

    def setup(self, tmp: Path) -> None:
        self.disk = tmp / "base.img"
        self.disk.write_bytes(bytes(4096))
        hv = vmctl.connect("example")
        assert isinstance(hv, ExampleHypervisor)
        self.hv = hv

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        if ignore_power_button:
            self.hv.stubborn.add(name)
        return vmctl.MachineSpec(name=name, disk=self.disk, network=vmctl.Network() if network else None)

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        assert isinstance(vm, ExampleMachine)
        return ExampleProbe(vm)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        assert isinstance(vm, ExampleMachine)
        vm.crash()

    def leftovers(self, name: str) -> list[str]:
        return [f"machine {name!r}"] if name in self.hv._machine_names() else []

    def teardown(self) -> None:
        for vm in self.hv.machines():
            vm.destroy()
