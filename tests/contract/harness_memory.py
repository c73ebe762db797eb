"""Contract harness for the in-memory reference backend."""

from __future__ import annotations

from pathlib import Path

import vmctl
from vmctl.testing import GuestProbe, Harness
from vmctl_memory import MemoryMachine


class MemoryProbe(GuestProbe):
    def __init__(self, vm: vmctl.Machine) -> None:
        assert isinstance(vm, MemoryMachine)
        self.vm = vm

    def ready(self) -> bool:
        return self.vm.state is vmctl.State.RUNNING

    def counter(self) -> int:
        return self.vm.guest_counter()

    def power_button_presses(self) -> int:
        return self.vm.guest_power_button_presses()

    def boots(self) -> int:
        return self.vm.guest_boots()

    def link_up(self) -> bool | None:
        return self.vm.guest_link_up() if self.vm.spec.network is not None else None


class MemoryHarness(Harness):
    id = "memory"
    backend = "memory"
    boot_timeout = 5
    multi_process = False
    real_guest = False
    race_rounds = 100

    def setup(self, tmp: Path) -> None:
        self.disk = tmp / "base.img"
        self.disk.write_bytes(b"\0" * 4096)
        self.hv = vmctl.connect("memory", namespace=f"contract-{id(self)}")

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        self._ignore = getattr(self, "_ignore", set())
        if ignore_power_button:
            self._ignore.add(name)
        return vmctl.MachineSpec(name=name, disk=self.disk, network=vmctl.Network() if network else None)

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        assert isinstance(vm, MemoryMachine)
        if name_ignored := vm.name in getattr(self, "_ignore", set()):
            vm.set_guest_ignores_power_button(name_ignored)
        return MemoryProbe(vm)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        assert isinstance(vm, MemoryMachine)
        vm.crash()

    def teardown(self) -> None:
        for vm in self.hv.machines():
            vm.destroy()


HARNESSES = [MemoryHarness]
