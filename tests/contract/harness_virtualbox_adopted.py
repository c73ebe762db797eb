"""Contract harness for adopted VirtualBox VMs, against the VBoxManage simulator: each machine is
made with VBoxManage itself (createvm, modifyvm, storagectl, storageattach: what a user types, with
no vmctl extradata) in a folder of its own, then opened with ``hv.machine(name)``."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import vmctl

from .harness_virtualbox import VirtualBoxSimHarness


class VirtualBoxSimAdoptedHarness(VirtualBoxSimHarness):
    """VMs registered with the simulator by VBoxManage commands, then adopted. destroy unregisters
    them and keeps their folders and disks (vmctl did not make them); teardown deletes those."""

    id = "virtualbox-sim-adopted"
    adopted = True

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        self.theirs = tmp / "their-vms"
        self.theirs.mkdir()
        self.made: set[str] = set()

    def _vboxmanage(self, *args: str) -> None:
        # the simulator's "machine is locked" fault hits these commands too: retry it, as users do
        for _ in range(20):
            proc = subprocess.run([str(self.vboxmanage), *args], capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                return
            if "already locked" not in proc.stderr:
                raise AssertionError(f"VBoxManage {' '.join(args)}: {proc.stderr}")
            time.sleep(0.01)
        raise AssertionError(f"VBoxManage {' '.join(args)} stayed locked")

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        assert spec.disk is not None
        disk = self.theirs / f"{spec.name}.vdi"
        shutil.copyfile(spec.disk, disk)
        name = spec.name
        self._vboxmanage("createvm", "--name", name, "--basefolder", str(self.theirs), "--register")
        modify = ["modifyvm", name, "--memory", str(spec.memory_mib), "--cpus", str(spec.cpus)]
        modify += ["--nic1", "nat", "--cableconnected1", "on"] if spec.network is not None else ["--nic1", "none"]
        if spec.serial_log is not None:
            modify += ["--uart1", "0x3F8", "4", "--uartmode1", "file", str(spec.serial_log)]
        self._vboxmanage(*modify)
        self._vboxmanage("storagectl", name, "--name", "SATA", "--add", "sata")
        self._vboxmanage(
            "storageattach", name, "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "hdd",
            "--medium", str(disk),
        )  # fmt: skip
        self.made.add(name)
        return self.hv.machine(name)

    def leftovers(self, name: str) -> list[str]:
        # the VM's own folder stays by design: destroy keeps what vmctl did not make
        return [f for f in super().leftovers(name) if not f.startswith(str(self.theirs))]

    def teardown(self) -> None:
        try:
            for vm in self.hv.machines(all=True):
                if vm.name in self.made:
                    with contextlib.suppress(vmctl.VmctlError):
                        vm.destroy(delete_disks=True)
        finally:
            shutil.rmtree(self.theirs, ignore_errors=True)
            super().teardown()


HARNESSES = [VirtualBoxSimAdoptedHarness]
