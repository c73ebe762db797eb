"""Contract harness for the QEMU backend: real QEMU (TCG) booting the test guest."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

import vmctl
from vmctl.testguest import ensure_test_guest
from vmctl.testing import GuestProbe, Harness, SerialLogProbe


class QemuHarness(Harness):
    id = "qemu"
    backend = "qemu"
    boot_timeout = 90

    def setup(self, tmp: Path) -> None:
        self.tmp = tmp
        self.guest = ensure_test_guest()
        self.state_dir = tmp / "state"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.hv = vmctl.connect("qemu", state_dir=self.state_dir, accel="tcg")

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def connect_code(self) -> str:
        return f"import vmctl\nhv = vmctl.connect('qemu', state_dir={str(self.state_dir)!r}, accel='tcg')\n"

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        cmdline = self.guest.cmdline + (" vmctl.powerbutton=ignore" if ignore_power_button else "")
        return vmctl.MachineSpec(
            name=name,
            disk=self.guest.disk,
            kernel=self.guest.kernel,
            initrd=self.guest.initrd,
            cmdline=cmdline,
            memory_mib=256,
            network=vmctl.Network() if network else None,
            serial_log=self.logs / f"{name}.log",
        )

    def spec_code(self, name: str) -> str:
        g = self.guest
        return (
            f"vmctl.MachineSpec(name={name!r}, disk={str(g.disk)!r}, kernel={str(g.kernel)!r}, "
            f"initrd={str(g.initrd)!r}, cmdline={g.cmdline!r})"
        )

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        assert vm.spec.serial_log is not None
        return SerialLogProbe(vm.spec.serial_log)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        pid = vm.pid  # read once: each read asks the machine again
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def leftovers(self, name: str) -> list[str]:
        found = [str(p) for p in self.state_dir.glob(f"*{name}*")]
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if any(f"guest={name}" == arg for arg in cmd) or any(str(self.state_dir / name) == a for a in cmd):
                found.append(f"pid {proc.info['pid']}: {' '.join(cmd)[:120]}")
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            try:
                vm.destroy()
            except vmctl.VmctlError:
                subprocess.run(["pkill", "-9", "-f", str(self.state_dir / vm.name)], check=False)


HARNESSES = [QemuHarness]
