"""Adopted VMware VMs against the vmrun simulator: a user's .vmx (no vmctl record) adopted with
``hv.adopt(name, vmx=path)``, its spec read from the .vmx, and destroy keeping its files unless
``delete_disks=True``. The verbs on adopted VMs run in the contract suite (``vmware-sim-adopted``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.contract.harness_vmware_adopted import VmwareSimAdoptedHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[VmwareSimAdoptedHarness]:
    h = VmwareSimAdoptedHarness()
    h.setup(tmp_path)
    yield h
    h.teardown()


def test_a_users_vmx_is_adopted_and_keeps_its_files(harness: VmwareSimAdoptedHarness, tmp_path: Path) -> None:
    hv = harness.connect()
    vm = harness.create(harness.spec("theirs", network=True))
    other = harness.create(harness.spec("other"))
    assert vm.managed is False and hv.machines() == []
    assert [m.name for m in hv.machines(all=True)] == ["other", "theirs"]
    folder = harness.theirs / "theirs"
    spec = vm.spec
    assert (spec.memory_mib, spec.cpus, spec.disk, spec.overlay) == (256, 1, folder / "theirs.vmdk", False)
    assert spec.network == vmctl.Network() and spec.serial_log == harness.logs / "theirs.log"
    with pytest.raises(vmctl.MachineExists):
        hv.adopt("theirs", vmx=folder / "theirs.vmx")  # type: ignore[attr-defined]
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(vmctl.InvalidSpec):
        hv.adopt("x", vmx=tmp_path / "x.txt")  # type: ignore[attr-defined]
    vm.start()
    vm.poweroff()
    vm.destroy()
    assert (folder / "theirs.vmx").is_file() and (folder / "theirs.vmdk").is_file()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("theirs")
    other.destroy(delete_disks=True)
    assert not (harness.theirs / "other" / "other.vmdk").exists()
