"""Adopted vSphere VMs against vcsim: its pre-made VMs, outside the connection's folder and
without vmctl's record, opened by name; destroy unregisters them and keeps their files unless
``delete_disks=True``. The verbs on adopted VMs run in the contract suite (``vsphere-vcsim-adopted``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.vcsim import Vcsim, vcsim_fixture
from vmctl import State

vcsim = vcsim_fixture(vms=1)


@pytest.fixture
def hv(vcsim: Vcsim) -> Iterator[Any]:
    conn = vcsim.connect(folder="vmctl-adopt")
    try:
        yield conn
    finally:
        conn.close()


def vm_files(vcsim: Vcsim, name: str) -> list[str]:
    return sorted(p.name for p in vcsim.datastore_root.glob(f"*/{name}/*"))


def test_premade_vms_are_adopted_and_keep_their_files(hv: Any, vcsim: Vcsim, tmp_path: Path) -> None:
    premade = [m.name for m in hv.machines(all=True)]
    assert hv.machines() == [] and len(premade) >= 2
    first, second = premade[0], premade[1]
    vm = hv.machine(first)
    assert vm.managed is False
    assert vm.spec.name == first and vm.spec.memory_mib > 0 and vm.spec.cpus >= 1
    if vm.state is State.RUNNING:
        vm.poweroff()
    vm.snapshot("before")
    vm.start()
    vm.revert("before")
    assert vm.state is State.STOPPED
    vm.delete_snapshot("before")
    kept = vm_files(vcsim, first)
    assert kept, "vcsim keeps a pre-made VM's files on its datastore"
    with pytest.raises(vmctl.MachineExists):
        raw = tmp_path / "base.img"
        raw.write_bytes(b"\0" * 4096)
        hv.create(vmctl.MachineSpec(name=first, disk=raw))
    vm.destroy()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine(first)
    assert vm_files(vcsim, first) == kept, "an adopted VM's files stay unless delete_disks=True"
    assert vm_files(vcsim, second)
    hv.machine(second).destroy(delete_disks=True)
    assert vm_files(vcsim, second) == []
