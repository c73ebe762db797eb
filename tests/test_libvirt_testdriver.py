"""The libvirt backend on libvirt's in-process mock driver (test:///default): fast, no daemon.

The mock has no guest, so these tests check what the driver itself records: states and their
transitions, managed saves, snapshots, vmctl's marking of its own domains, overlays, and that
usage of many machines costs one libvirt call.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import State
from vmctl.tools import run_tool

from .contract.harness import wait_until

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    disk = tmp_path / "base.qcow2"
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], timeout=30)
    return disk


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[vmctl.Hypervisor]:
    conn = vmctl.connect("libvirt", uri=URI, state_dir=tmp_path / "overlays")
    yield conn
    for vm in conn.machines():
        vm.destroy()
    conn.close()


def test_without_libvirt_python_connect_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)
    with pytest.raises(vmctl.BackendUnavailable) as err:
        vmctl.connect("libvirt", uri=URI)
    assert err.value.hint == "pip install vmctl[libvirt]"
    assert "pip install vmctl[libvirt]" in str(err.value)
    info = {b.name: b for b in vmctl.backends()}["libvirt"]
    assert not info.usable and info.hint == "pip install vmctl[libvirt]"


def test_only_vmctl_domains_are_vmctl_machines(hv: vmctl.Hypervisor, base: Path) -> None:
    # test:///default comes with a running domain called "test" that vmctl did not create: it is
    # adopted (tests/test_libvirt_adopt.py), never listed among vmctl's own machines.
    raw = libvirt.open(URI)
    try:
        assert "test" in [d.name() for d in raw.listAllDomains()]
        assert "test" not in [m.name for m in hv.machines()]
        assert hv.machine("test").managed is False
        with pytest.raises(vmctl.MachineExists):
            hv.create(vmctl.MachineSpec(name="test", disk=base))
        vm = hv.create(vmctl.MachineSpec(name="mine", disk=base, memory_mib=128, cpus=2))
        assert [m.name for m in hv.machines()] == ["mine"] and vm.managed
        assert vm.spec == vmctl.MachineSpec(name="mine", disk=base, memory_mib=128, cpus=2)
        dom = raw.lookupByName("mine")
        assert dom.info()[1] == 128 * 1024 and dom.info()[3] == 2
        assert raw.lookupByName("test").isActive(), "vmctl must not touch other domains"
    finally:
        raw.close()


def test_overlay_is_created_and_removed_and_the_base_never_changes(
    hv: vmctl.Hypervisor, base: Path, tmp_path: Path
) -> None:
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    vm = hv.create(vmctl.MachineSpec(name="ov1", disk=base))
    overlays = list((tmp_path / "overlays").glob("ov1-*.qcow2"))
    assert len(overlays) == 1
    info = run_tool(["qemu-img", "info", "-U", str(overlays[0])], timeout=30).stdout
    assert f"backing file: {base}" in info
    vm.start()
    vm.snapshot("s")
    vm.destroy()
    assert list((tmp_path / "overlays").glob("ov1-*")) == []
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest


def test_lifecycle_transitions_as_the_driver_records_them(hv: vmctl.Hypervisor, base: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="life", disk=base, network=vmctl.Network()))
    assert vm.state is State.STOPPED
    vm.start()
    assert vm.state is State.RUNNING
    with pytest.raises(vmctl.InvalidState):
        vm.start()
    vm.pause()
    assert vm.state is State.PAUSED
    vm.suspend()  # from PAUSED: saved, and restored RUNNING
    assert vm.state is State.SUSPENDED
    vm.start()
    assert vm.state is State.RUNNING
    vm.suspend()
    vm.poweroff()  # discards the managed save
    assert vm.state is State.STOPPED
    raw = libvirt.open(URI)
    try:
        assert not raw.lookupByName("life").hasManagedSaveImage(0)
    finally:
        raw.close()
    vm.start()
    assert vm.stop(timeout=5) is True
    assert vm.state is State.STOPPED
    vm.start()
    assert vm.restart(hard=True) is False and vm.state is State.RUNNING
    assert vm.restart(hard=False) is True and vm.state is State.RUNNING
    with pytest.raises(vmctl.Unsupported):
        vm.set_network(False)  # the mock driver cannot update devices
    vm.poweroff()
    assert vm.state is State.STOPPED


def test_snapshots_memory_order_and_revert(hv: vmctl.Hypervisor, base: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="snaps", disk=base))
    cold = vm.snapshot("cold", description="disk only")
    assert not cold.has_memory and cold.description == "disk only"
    vm.start()
    hot = vm.snapshot("hot")
    assert hot.has_memory and hot.parent == "cold"
    vm.pause()
    frozen = vm.snapshot("frozen")
    assert frozen.has_memory
    assert [s.name for s in vm.snapshots()] == ["cold", "hot", "frozen"]
    vm.revert("cold")
    assert vm.state is State.STOPPED
    vm.revert("frozen")
    assert vm.state is State.RUNNING  # a memory snapshot always ends running, even a paused one
    vm.suspend()
    vm.revert("hot")
    assert vm.state is State.RUNNING
    vm.delete_snapshot("hot")
    assert [s.name for s in vm.snapshots()] == ["cold", "frozen"]
    with pytest.raises(vmctl.SnapshotNotFound):
        vm.revert("hot")


def _count_libvirt_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every call of a virConnect or virDomain method that goes to the driver."""
    # Answered by the client library itself, without a message to the driver or daemon.
    local = {"name", "UUIDString", "UUID", "connect", "c_pointer", "isAlive"}
    calls: Counter[str] = Counter()
    for cls in (libvirt.virConnect, libvirt.virDomain):
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") or attr in local or not callable(value):
                continue

            def wrapper(*args: Any, __f: Callable[..., Any] = value, __n: str = f"{cls.__name__}.{attr}") -> Any:
                calls[__n] += 1
                return __f(*args)

            monkeypatch.setattr(cls, attr, wrapper)
    return calls


def test_usage_all_is_one_libvirt_call_however_many_machines(
    hv: vmctl.Hypervisor, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms = [hv.create(vmctl.MachineSpec(name=f"bulk{i}", disk=base)) for i in range(12)]
    for vm in vms[:6]:
        vm.start()
    first = hv.usage_all()
    assert sorted(first) == sorted(vm.name for vm in vms)
    calls = _count_libvirt_calls(monkeypatch)
    again = hv.usage_all()
    assert sorted(again) == sorted(first)
    assert dict(calls) == {"virConnect.getAllDomainStats": 1}
    # A machine created by another connection costs one metadata look-up, once.
    other = vmctl.connect("libvirt", uri=URI, state_dir=base.parent / "other")
    try:
        other.create(vmctl.MachineSpec(name="bulk-other", disk=base))
        calls.clear()
        assert "bulk-other" in hv.usage_all()
        assert calls["virConnect.getAllDomainStats"] == 1 and calls["virDomain.metadata"] == 1
        calls.clear()
        hv.usage_all()
        assert dict(calls) == {"virConnect.getAllDomainStats": 1}
    finally:
        other.machine("bulk-other").destroy()
        other.close()


def test_wait_for_wakes_on_the_lifecycle_event_not_by_polling(hv: vmctl.Hypervisor, base: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="evt", disk=base))
    connection = hv.connection  # type: ignore[attr-defined]
    wait_until(lambda: connection.change_count("evt") >= 1, 5, "the 'defined' event of the new domain")
    reads: list[float] = []
    original = type(vm)._get_state

    def counting_get_state(self: vmctl.Machine) -> State:
        reads.append(time.monotonic())
        return original(self)

    vm._get_state = counting_get_state.__get__(vm)  # type: ignore[method-assign]
    result: list[State] = []
    waiter = threading.Thread(target=lambda: result.append(vm.wait_for(State.RUNNING, timeout=30)))
    waiter.start()
    # A second connection to the same driver starts the machine: only an event can tell the waiter.
    other = vmctl.connect("libvirt", uri=URI, state_dir=base.parent / "other")
    try:
        wait_until(lambda: reads, 5, "the waiter to read the state")
        time.sleep(1.0)  # an observation window: a polling wait would read the state ~20 times here
        assert len(reads) == 1, f"wait_for read the state {len(reads)} times without any change"
        started = time.monotonic()
        other.machine("evt").start()
        waiter.join(10)
        assert result == [State.RUNNING]
        assert reads[-1] - started < 0.5
        assert len(reads) <= 3
    finally:
        waiter.join(30)
        other.close()


def test_a_closed_connection_reports_backend_error_and_a_new_one_works(hv: vmctl.Hypervisor, base: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="closed", disk=base))
    hv.close()
    # The next call reconnects by itself.
    assert vm.state is State.STOPPED
    bad = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    started = time.monotonic()
    with pytest.raises(vmctl.BackendError) as err:
        vmctl.connect("libvirt", uri=bad)
    assert time.monotonic() - started < 5
    assert "cannot connect" in str(err.value) and err.value.command


def test_without_overlay_the_base_is_the_disk_and_destroy_deletes_its_snapshots(
    hv: vmctl.Hypervisor, base: Path, tmp_path: Path
) -> None:
    vm = hv.create(vmctl.MachineSpec(name="direct", disk=base, overlay=False))
    assert not (tmp_path / "overlays").exists() or list((tmp_path / "overlays").iterdir()) == []
    raw = libvirt.open(URI)
    try:
        assert f"<source file='{base}'/>" in raw.lookupByName("direct").XMLDesc(0)
        vm.snapshot("a")
        vm.start()
        vm.snapshot("b")
        vm.destroy()
        assert "direct" not in [d.name() for d in raw.listAllDomains()]
    finally:
        raw.close()
    assert base.exists()


def test_an_overlay_path_outside_the_state_dir_is_never_deleted(tmp_path: Path) -> None:
    from vmctl_libvirt._storage import LocalOverlays

    overlays = LocalOverlays(tmp_path / "overlays")
    victim = tmp_path / "victim.qcow2"
    victim.write_bytes(b"keep me")
    for path in (str(victim), str(tmp_path / "overlays" / ".." / "victim.qcow2")):
        with pytest.raises(vmctl.InvalidSpec, match="outside"):
            overlays.delete(path)  # a path from a domain's metadata, which anyone may have edited
    assert victim.read_bytes() == b"keep me"
    own = tmp_path / "overlays" / "m-1.qcow2"
    own.write_bytes(b"")
    overlays.delete(str(own))
    assert not own.exists()
