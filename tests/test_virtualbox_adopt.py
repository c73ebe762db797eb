"""Adopted VirtualBox VMs against the VBoxManage simulator: a VM made with VBoxManage commands (no
vmctl extradata) is opened by name, its spec read from showvminfo, and destroy keeps its folder and
disk unless ``delete_disks=True``. The verbs on adopted VMs run in the contract suite
(``virtualbox-sim-adopted``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.contract.harness_virtualbox_adopted import VirtualBoxSimAdoptedHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[VirtualBoxSimAdoptedHarness]:
    h = VirtualBoxSimAdoptedHarness()
    h.setup(tmp_path)
    yield h
    h.teardown()


def test_a_vboxmanage_made_vm_is_adopted_and_keeps_its_disk(harness: VirtualBoxSimAdoptedHarness) -> None:
    hv = harness.connect()
    vm = harness.create(harness.spec("theirs", network=True))
    other = harness.create(harness.spec("other"))
    assert vm.managed is False and hv.machines() == []
    assert [m.name for m in hv.machines(all=True)] == ["other", "theirs"]
    spec = vm.spec
    disk = harness.theirs / "theirs.vdi"
    assert (spec.memory_mib, spec.cpus, spec.disk, spec.overlay) == (256, 1, disk, False)
    assert spec.network == vmctl.Network() and spec.serial_log == harness.tmp / "theirs.serial.log"
    vm.destroy()
    assert disk.is_file() and (harness.theirs / "theirs").is_dir()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("theirs")
    other.destroy(delete_disks=True)
    assert not (harness.theirs / "other.vdi").exists()
