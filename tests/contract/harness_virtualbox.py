"""Contract harness for the VirtualBox backend, run against the VBoxManage simulator.

VirtualBox cannot be installed here, so ``VBoxManage`` is ``tests/simulators/vboxmanage_sim.py``
(a stateful simulator of VBoxManage 7; see its docstring for what it reproduces and where that
was checked). The harness puts a ``VBoxManage`` wrapper on PATH, so the backend finds it as it
would find VirtualBox's, and turns on the simulator's quirks for the whole run: every 7th command
fails with the transient "machine is locked" error (VBOX_E_INVALID_OBJECT_STATE) and every second
``startvm`` exits 1 after printing success. The guest is read from the simulator's state files.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import vmctl
from vmctl.testing import GuestProbe, Harness, SimulatedGuestProbe

SIMULATOR = Path(__file__).resolve().parents[1] / "simulators" / "vboxmanage_sim.py"


def load_simulator() -> ModuleType:
    """The simulator as a module, for reading its state (it is also the VBoxManage executable)."""
    spec = importlib.util.spec_from_file_location("vboxmanage_sim", SIMULATOR)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("vboxmanage_sim")
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["vboxmanage_sim"] = module
        spec.loader.exec_module(module)
    return module


def write_wrapper(path: Path, home: Path) -> Path:
    """A ``VBoxManage`` executable that runs the simulator with its state in ``home``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# vmctl test wrapper: runs the VBoxManage SIMULATOR, not VirtualBox.\n"
        f'VBOXSIM_HOME="{home}" exec "{sys.executable}" -I -S "{SIMULATOR}" "$@"\n'
    )
    path.chmod(0o755)
    return path


class SimGuestProbe(SimulatedGuestProbe):
    """The simulated guest of one machine, read from the simulator's state."""

    def __init__(self, sim: ModuleType, home: Path, name: str) -> None:
        self.sim = sim
        self.home = home
        self.name = name

    def _view(self) -> dict[str, Any]:
        view = self.sim.guest_view(self.home, self.name)
        assert view is not None, f"the simulator has no machine {self.name!r}"
        return dict(view)


class VirtualBoxSimHarness(Harness):
    id = "virtualbox-sim"
    backend = "virtualbox"
    boot_timeout = 15
    multi_process = True
    real_guest = False
    race_rounds = 20

    def setup(self, tmp: Path) -> None:
        self.sim = load_simulator()
        self.tmp = tmp
        self.home = tmp / "vboxsim-home"
        self.base_folder = tmp / "vms"
        self.disk = tmp / "base.vdi"
        self.disk.write_bytes(b"<<vmctl test base image>>" + bytes(4096))
        self.bin = tmp / "bin"
        self.vboxmanage = write_wrapper(self.bin / "VBoxManage", self.home)
        self.sim.add_fault(self.home, "lock", "*", count=None, every=7)
        self.sim.add_fault(self.home, "startvm_nonzero", "startvm", count=None, every=2)
        self.hv = vmctl.connect("virtualbox", **self._options())

    def tool_environment(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _options(self) -> dict[str, Any]:
        # The simulator by path, never on PATH: the harness lives for the whole session, and a
        # VBoxManage on PATH would make every later test see an installed VirtualBox.
        return {
            "transport": "vboxmanage",
            "vboxmanage": str(self.vboxmanage),
            "base_folder": str(self.base_folder),
            "retry_delay": 0.01,
        }

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def connect_code(self) -> str:
        return f"import vmctl\nhv = vmctl.connect('virtualbox', **{self._options()!r})\n"

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        self.sim.set_guest_profile(self.home, name, ignore_power_button=ignore_power_button)
        return vmctl.MachineSpec(
            name=name,
            disk=self.disk,
            memory_mib=256,
            network=vmctl.Network() if network else None,
            serial_log=self.tmp / f"{name}.serial.log",
        )

    def spec_code(self, name: str) -> str:
        return f"vmctl.MachineSpec(name={name!r}, disk={str(self.disk)!r})"

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        return SimGuestProbe(self.sim, self.home, vm.name)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        pid = vm.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def leftovers(self, name: str) -> list[str]:
        found = []
        if self.sim.guest_view(self.home, name) is not None:
            found.append(f"machine {name!r} still registered with the simulator")
        folder = self.base_folder / name
        if folder.exists():
            found += [str(p) for p in sorted(folder.rglob("*"))] or [str(folder)]
        lock = self.base_folder / ".vmctl-locks" / f"{name}.lock"
        if lock.exists():
            found.append(str(lock))
        for pid in self.sim.vm_processes(self.home):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if name.encode() in cmdline:
                found.append(f"VM process {pid}")
        return found

    def teardown(self) -> None:
        try:
            for vm in self.hv.machines():
                try:
                    vm.destroy()
                except vmctl.VmctlError:
                    pass
        finally:
            for pid in self.sim.vm_processes(self.home):
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass


HARNESSES = [VirtualBoxSimHarness]
