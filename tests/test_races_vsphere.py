"""vSphere races of issue 21, each provoked on purpose against vcsim: vSphere holds no lock
across vmctl's calls, so another client can act between two of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.vcsim import Vcsim, vcsim_fixture

vcsim = vcsim_fixture(vms=1)
FOLDER = "races"


@pytest.fixture
def hv(vcsim: Vcsim) -> Iterator[Any]:
    conn = vcsim.connect(folder=FOLDER)
    try:
        yield conn
    finally:
        for vm in conn.machines():
            vm.destroy()
        conn.close()


def test_snapshot_deleted_by_another_client_before_it_is_listed(hv: Any, vcsim: Vcsim, tmp_path: Path) -> None:
    """The snapshot task ends, then another client deletes the snapshot before vmctl lists it:
    SnapshotNotFound (it was an IndexError)."""
    disk = tmp_path / "base.img"
    disk.write_bytes(b"\1" * (1 << 20))
    vm = hv.create(vmctl.MachineSpec(name="r", disk=disk))
    vm.snapshot("s0")  # so that s1 has a parent: vcsim 0.24.2 crashes removing a parentless current one
    other = vcsim.connect(folder=FOLDER)
    task = vm._task

    def task_then_delete(verb: str, *args: Any, **kwargs: Any) -> Any:
        result = task(verb, *args, **kwargs)
        if verb == "snapshot":
            other.machine("r").delete_snapshot("s1")
        return result

    vm._task = task_then_delete
    try:
        with pytest.raises(vmctl.SnapshotNotFound):
            vm.snapshot("s1")
    finally:
        other.close()
    assert [s.name for s in vm.snapshots()] == ["s0"]
