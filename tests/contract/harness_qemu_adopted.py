"""Contract harness for adopted QEMU processes: each machine is a QEMU started by the harness with a
plain command line and a QMP socket (as a user or another tool starts one), then adopted with
``hv.adopt(name, qmp=socket)``."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import vmctl
from vmctl.testing import GuestProbe, SerialLogProbe
from vmctl.tools import run_tool

from .harness_qemu import QemuHarness


def qemu_command(spec: vmctl.MachineSpec, disk: Path, qmp: Path) -> list[str]:
    """A QEMU command line as a user writes one: TCG, the kernel and a virtio disk, a QMP socket."""
    assert spec.serial_log is not None
    argv = [
        "qemu-system-x86_64",
        "-name", f"guest={spec.name}",
        "-machine", "q35", "-accel", "tcg", "-cpu", "max",
        "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        "-nodefaults", "-display", "none", "-device", "VGA",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        # appended, so that the probe counts every boot in one log
        "-chardev", f"file,id=console,path={spec.serial_log},append=on", "-serial", "chardev:console",
        "-drive", f"file={disk},if=virtio,format=qcow2",
    ]  # fmt: skip
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    if spec.network is not None:
        argv += ["-nic", "user,model=virtio-net-pci"]
    return argv


class QemuAdoptedHarness(QemuHarness):
    """QEMU processes started outside vmctl and adopted through their QMP sockets. destroy keeps
    their disks (vmctl did not make them): the harness deletes them at teardown."""

    id = "qemu-adopted"
    adopted = True
    #: vmctl is not the parent of an adopted QEMU: a killed one reads STOPPED, not CRASHED
    can_crash = False

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        self.disks = tmp / "disks"
        self.disks.mkdir()
        self.started: list[subprocess.Popen[bytes]] = []

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        assert spec.disk is not None
        overlay = self.disks / f"{spec.name}.qcow2"
        base = str(spec.disk)
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, str(overlay)], timeout=60)
        qmp = self.disks / f"{spec.name}.qmp"
        argv = qemu_command(spec, overlay, qmp)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started.append(proc)
        deadline = time.monotonic() + 30
        while not qmp.exists():
            if proc.poll() is not None:
                raise AssertionError(f"QEMU exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"QEMU made no QMP socket at {qmp}")
            time.sleep(0.02)
        vm = self.hv.adopt(spec.name, qmp=qmp)  # type: ignore[attr-defined]
        vm.poweroff()  # the contract's machines begin STOPPED; start runs the same command line
        proc.wait(30)
        return vm

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        assert vm.spec.serial_log is not None, "the serial log is read from the adopted command line"
        return SerialLogProbe(vm.spec.serial_log)

    def teardown(self) -> None:
        for vm in self.hv.machines(all=True):
            with contextlib.suppress(vmctl.VmctlError):
                vm.destroy(delete_disks=not vm.managed)
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        super().teardown()
        shutil.rmtree(self.disks, ignore_errors=True)


HARNESSES = [QemuAdoptedHarness]
