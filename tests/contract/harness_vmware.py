"""Contract harness for the vmware (vmrun) backend, run against the vmrun simulator.

VMware's products cannot be installed here, so ``vmrun`` is ``tests/simulators/vmrun_sim.py``
(see its docstring for what it reproduces and where that comes from). The probe reads the
simulated guest from the simulator's state files. Two configurations: Workstation (``ws``), and
Player, whose vmrun refuses snapshots, pause and clone (so its machines use ``overlay=False``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

import vmctl
from vmctl.testing import GuestProbe, Harness, SimulatedGuestProbe, wait_until

SIMULATOR = Path(__file__).resolve().parents[1] / "simulators" / "vmrun_sim.py"
REALWORLD = Path(__file__).resolve().parents[1] / "realworld" / "vmware"


def realworld_sample(name: str) -> tuple[dict[str, str], bytes]:
    """A captured sample: its ``#: key: value`` header lines, and the bytes after the blank line
    that ends them (what the real tool printed or wrote, unchanged)."""
    data = (REALWORLD / name).read_bytes()
    header: dict[str, str] = {}
    pos = 0
    while data.startswith(b"#:", pos):
        end = data.index(b"\n", pos)
        key, _, value = data[pos + 2 : end].decode("ascii").strip().partition(": ")
        header[key] = value
        pos = end + 1
    assert header and data[pos : pos + 1] == b"\n", f"{name}: no '#:' header ended by one blank line"
    return header, data[pos + 1 :]


def realworld_samples(*kinds: str) -> list[str]:
    """Names of the captured samples of these kinds (all if none given), sorted."""
    return sorted(p.name for p in REALWORLD.iterdir() if not kinds or realworld_sample(p.name)[0]["kind"] in kinds)


def load_simulator() -> ModuleType:
    """The simulator as a module (its guest_view/set_profile/collect_garbage functions)."""
    spec = importlib.util.spec_from_file_location("vmrun_sim", SIMULATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_vmrun(directory: Path, home: Path) -> Path:
    """An executable ``vmrun`` that runs the simulator with its state in ``home``.

    It runs this interpreter directly (no ``env`` or pyenv shim lookup per call), and sets
    ``VMRUNSIM_HOME`` itself, so each harness or test has its own simulated host.
    """
    directory.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    path = directory / "vmrun"
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, runpy, sys\n"
        f"os.environ['VMRUNSIM_HOME'] = {str(home)!r}\n"
        f"sys.argv[0] = {str(SIMULATOR)!r}\n"
        f"runpy.run_path({str(SIMULATOR)!r}, run_name='__main__')\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_vmdk(path: Path) -> Path:
    """A stand-in base disk (the simulator never reads it; tests check it is never changed)."""
    path.write_text(
        '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=12345678\nparentCID=ffffffff\n'
        'createType="monolithicSparse"\n# Extent description\nRW 2097152 SPARSE "base.vmdk"\n'
    )
    return path


def vmx_processes(marker: str) -> list[psutil.Process]:
    """Simulated vmware-vmx processes whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and os.path.basename(cmd[0]).startswith("vmware-vmx") and any(marker in arg for arg in cmd):
            found.append(proc)
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SimProbe(SimulatedGuestProbe):
    """The simulated guest of one VM, read from the simulator's state."""

    def __init__(self, sim: ModuleType, home: Path, vmx: Path, has_nic: bool) -> None:
        self.sim, self.home, self.vmx, self.has_nic = sim, home, vmx, has_nic

    def _view(self) -> dict[str, Any]:
        view: dict[str, Any] = self.sim.guest_view(self.home, self.vmx)
        return view

    def link_up(self) -> bool | None:
        return bool(self._view()["link_up"]) if self.has_nic else None


class VmwareSimHarness(Harness):
    id = "vmware-sim"
    backend = "vmware"
    product = "ws"
    boot_timeout = 15
    multi_process = True
    real_guest = False
    race_rounds = 20

    def setup(self, tmp: Path) -> None:
        self.sim = load_simulator()
        self.tmp = tmp
        self.home = tmp / "vmrunsim"
        self.vmrun = make_vmrun(tmp / "bin", self.home)
        self.vm_dir = tmp / "vms"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.disk = fake_vmdk(tmp / "base.vmdk")
        self.hv = vmctl.connect("vmware", product=self.product, vmrun=self.vmrun, vm_dir=self.vm_dir)

    @property
    def overlay(self) -> bool:
        return self.product != "player"

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def tool_environment(self) -> dict[str, str]:
        return {"VMCTL_VMRUN": str(self.vmrun)}

    def connect_code(self) -> str:
        return (
            "import vmctl\n"
            f"hv = vmctl.connect('vmware', product={self.product!r}, vmrun={str(self.vmrun)!r}, "
            f"vm_dir={str(self.vm_dir)!r})\n"
        )

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        self.sim.set_profile(self.home, name, ignore_power_button=ignore_power_button)
        return vmctl.MachineSpec(
            name=name,
            disk=self.disk,
            overlay=self.overlay,
            memory_mib=256,
            network=vmctl.Network() if network else None,
            serial_log=self.logs / f"{name}.log",
        )

    def spec_code(self, name: str) -> str:
        return f"vmctl.MachineSpec(name={name!r}, disk={str(self.disk)!r}, overlay={self.overlay!r})"

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        vmx = self.vm_dir / vm.name / f"{vm.name}.vmx"
        return SimProbe(self.sim, self.home, vmx, vm.spec.network is not None)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        pid = vm.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, "the VMX process to die")

    def leftovers(self, name: str) -> list[str]:
        self.sim.collect_garbage(self.home)
        inside = str(self.vm_dir / name) + os.sep
        found = [
            str(p)
            for p in self.vm_dir.iterdir()
            if p.name == name or p.name.startswith((f".{name}.creating-", f".{name}.deleting-"))
        ]
        for proc in vmx_processes(inside):
            found.append(f"pid {proc.pid}: {' '.join(proc.info['cmdline'])[:160]}")
        for state in (self.home / "vms").glob("*/state.json"):
            if inside in state.read_text():
                found.append(f"simulator state {state}")
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            with contextlib.suppress(vmctl.VmctlError):
                vm.destroy()
        for proc in vmx_processes(str(self.vm_dir)):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.hv.close()


class VmwarePlayerSimHarness(VmwareSimHarness):
    id = "vmware-player-sim"
    product = "player"


HARNESSES = [VmwareSimHarness, VmwarePlayerSimHarness]
