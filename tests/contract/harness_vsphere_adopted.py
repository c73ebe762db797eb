"""Contract harness for adopted vSphere VMs: each machine is a VM made with pyvmomi's own
CreateVM_Task in the datacenter's root VM folder, outside the connection's folder and without
vmctl's extraConfig record, then opened with ``hv.machine(name)``."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from pyVim.task import WaitForTask
from pyVmomi import vim

import vmctl

from .harness_vsphere import VsphereVcsimHarness


class VsphereVcsimAdoptedHarness(VsphereVcsimHarness):
    """vcsim VMs made as any vSphere client makes them, then adopted. destroy unregisters them and
    keeps their files (vmctl did not make them); the harness deletes those at teardown."""

    id = "vsphere-vcsim-adopted"
    adopted = True

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        self.made: set[str] = set()

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        from vmctl_vsphere._hypervisor import VSphereHypervisor

        hv = self.hv
        assert isinstance(hv, VSphereHypervisor)
        session = hv.session
        pool = session.collect(session.content.rootFolder, vim.ResourcePool, ["name"])[0][0]
        network = session.props(hv.datacenter, ["network"])["network"][0]
        devices = []
        if spec.network is not None:
            nic = vim.vm.device.VirtualE1000(
                key=-1,
                backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network", network=network),
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True),
            )
            devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
        config = vim.vm.ConfigSpec(
            name=spec.name,
            memoryMB=spec.memory_mib,
            numCPUs=spec.cpus,
            guestId="otherGuest64",
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
            deviceChange=devices,
        )
        folder = session.props(hv.datacenter, ["vmFolder"])["vmFolder"]
        WaitForTask(folder.CreateVM_Task(config=config, pool=pool))
        self.made.add(spec.name)
        return hv.machine(spec.name)

    def leftovers(self, name: str) -> list[str]:
        # the VM's directory stays on the datastore by design: destroy keeps what vmctl did not make
        from vmctl_vsphere._hypervisor import VSphereHypervisor

        assert isinstance(self.hv, VSphereHypervisor)
        found = self.hv.session.collect(self.hv.content.rootFolder, vim.VirtualMachine, ["name"])
        return [f"VM {vm._moId} named {name!r}" for vm, props in found if props.get("name") == name]

    def teardown(self) -> None:
        try:
            for vm in self.hv.machines(all=True):
                if vm.name in self.made:
                    with contextlib.suppress(vmctl.VmctlError):
                        vm.destroy(delete_disks=True)
            for name in self.made:
                for path in self.server.datastore_root.glob(f"*/{name}"):
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            super().teardown()


HARNESSES = [VsphereVcsimAdoptedHarness]
