"""Contract harness for adopted VMware VMs, against the vmrun simulator: each machine is a ``.vmx``
written as a user's VM folder holds one (no vmctl record beside it), adopted with
``hv.adopt(name, vmx=path)``."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import psutil

import vmctl
from vmctl.testing import GuestProbe

from .harness_vmware import SimProbe, VmwareSimHarness, fake_vmdk, vmx_processes


def user_vmx(spec: vmctl.MachineSpec, disk: Path) -> str:
    """A Workstation-style .vmx: the disk by a relative name, a NAT NIC, a serial port to a file."""
    lines = {
        ".encoding": "UTF-8",
        "config.version": "8",
        "virtualHW.version": "19",
        "displayName": spec.name,
        "guestOS": "other-64",
        "memsize": str(spec.memory_mib),
        "numvcpus": str(spec.cpus),
        "scsi0.present": "TRUE",
        "scsi0.virtualDev": "lsilogic",
        "scsi0:0.present": "TRUE",
        "scsi0:0.fileName": disk.name,
        "ethernet0.present": "TRUE" if spec.network is not None else "FALSE",
    }
    if spec.network is not None:
        lines.update({"ethernet0.connectionType": "nat", "ethernet0.virtualDev": "e1000"})
    if spec.serial_log is not None:
        lines.update({"serial0.present": "TRUE", "serial0.fileType": "file", "serial0.fileName": str(spec.serial_log)})
    return "".join(f'{key} = "{value}"\n' for key, value in lines.items())


class VmwareSimAdoptedHarness(VmwareSimHarness):
    """VMs in a folder of their own, adopted by their .vmx. destroy forgets them and keeps their
    files (vmctl did not make them); the harness deletes those at teardown."""

    id = "vmware-sim-adopted"
    adopted = True

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        self.theirs = tmp / "their-vms"
        self.theirs.mkdir()

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        folder = self.theirs / spec.name
        folder.mkdir()
        disk = fake_vmdk(folder / f"{spec.name}.vmdk")
        vmx = folder / f"{spec.name}.vmx"
        vmx.write_text(user_vmx(spec, disk))
        return self.hv.adopt(spec.name, vmx=vmx)  # type: ignore[attr-defined]

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        vmx = self.theirs / vm.name / f"{vm.name}.vmx"
        return SimProbe(self.sim, self.home, vmx, vm.spec.network is not None)

    def leftovers(self, name: str) -> list[str]:
        found = super().leftovers(name)
        inside = str(self.theirs / name) + os.sep
        found += [f"pid {p.pid}" for p in vmx_processes(inside)]
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines(all=True):
            if not vm.managed:
                with contextlib.suppress(vmctl.VmctlError):
                    vm.destroy()
        for proc in vmx_processes(str(self.theirs)):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self.theirs, ignore_errors=True)
        super().teardown()


HARNESSES = [VmwareSimAdoptedHarness]
