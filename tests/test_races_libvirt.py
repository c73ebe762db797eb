"""libvirt races of issue 21, each provoked on purpose: another client (virsh, or a second libvirt
connection, outside vmctl's lock) moves the domain while a vmctl verb is under way, and vmctl
answers with a typed refusal that names the state, never a BackendError.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import State
from vmctl.backend.tools import run_tool
from vmctl.testing import wait_until

from .contract.harness_libvirt import load_services, readable_test_guest

libvirt = pytest.importorskip("libvirt")

URI = "qemu:///system"
STATE_DIR = Path("/var/lib/libvirt/images/vmctl")


@pytest.fixture
def test_driver(tmp_path: Path) -> Iterator[vmctl.Machine]:
    disk = tmp_path / "base.qcow2"
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], timeout=30)
    hv = vmctl.connect("libvirt", uri="test:///default", state_dir=tmp_path / "overlays")
    vm = hv.create(vmctl.MachineSpec(name=f"race-{time.monotonic_ns() % 10**8}", disk=disk))
    yield vm
    vm.destroy()
    hv.close()


def test_snapshot_name_taken_by_another_client_is_snapshot_exists(test_driver: vmctl.Machine) -> None:
    """vmctl found the name free, then another client took it before vmctl's create ran."""
    raw = libvirt.open("test:///default")  # the same driver as vmctl's connection in this process
    try:
        raw.lookupByName(test_driver.name).snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
    finally:
        raw.close()
    with pytest.raises(vmctl.SnapshotExists) as caught:
        test_driver._do_snapshot("s1", "", 30)  # the core's check passed a moment ago
    assert isinstance(caught.value, vmctl.InvalidSpec)  # what callers caught before
    assert caught.value.snapshot == "s1"


def test_snapshot_deleted_by_another_client_after_the_check_is_snapshot_not_found(
    test_driver: vmctl.Machine,
) -> None:
    snap = test_driver.snapshot("s1")
    raw = libvirt.open("test:///default")
    try:
        raw.lookupByName(test_driver.name).snapshotLookupByName("s1", 0).delete(0)
    finally:
        raw.close()
    with pytest.raises(vmctl.SnapshotNotFound):
        test_driver._do_revert(snap, 30)
    with pytest.raises(vmctl.SnapshotNotFound):
        test_driver._do_delete_snapshot("s1", 30)


@pytest.fixture
def system_vm(tmp_path: Path) -> Iterator[vmctl.Machine]:
    load_services().ensure_libvirtd()
    kernel, initrd, disk, cmdline = readable_test_guest()
    hv = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
    vm = hv.create(
        vmctl.MachineSpec(
            name=f"race-{time.monotonic_ns() % 10**8}",
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            memory_mib=256,
            serial_log=tmp_path / "serial.log",
        )
    )
    try:
        yield vm
    finally:
        try:
            vm.destroy()
        finally:
            hv.close()


def _job_active(name: str) -> bool:
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _suspend(vm: vmctl.Machine, out: dict[str, Any]) -> None:
    try:
        vm.suspend()
        out["result"] = "ok"
    except BaseException as exc:  # reported to the test
        out["error"] = exc


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_poweroff_by_another_client_during_suspend_is_invalid_state(
    system_vm: vmctl.Machine, request: pytest.FixtureRequest
) -> None:
    """Another client's destroy while vmctl's managed save runs: libvirt says "guest unexpectedly quit"
    (or that it cannot read from the monitor); vmctl says the machine is STOPPED now."""
    hits = 0
    outside = libvirt.open(URI)
    request.addfinalizer(outside.close)
    for _ in range(8):  # a round in which the save finished before the destroy proves nothing
        if system_vm.state is not State.RUNNING:
            if system_vm.state is not State.STOPPED:
                system_vm.poweroff()
            system_vm.start()
        out: dict[str, Any] = {}
        thread = threading.Thread(target=_suspend, args=(system_vm, out), daemon=True)
        thread.start()
        wait_until(lambda t=thread: _job_active(system_vm.name) or not t.is_alive(), 30, "the save to begin", 0.005)
        # another client's destroy over a connection opened beforehand: spawning virsh here took
        # long enough on a busy host for every save to finish first
        try:
            outside.lookupByName(system_vm.name).destroy()
            destroyed = True
        except libvirt.libvirtError:
            destroyed = False
        thread.join(60)
        assert not thread.is_alive(), "suspend hung after the domain was destroyed"
        if not destroyed or "error" not in out:
            continue  # the save won the race
        hits += 1
        error = out["error"]
        assert isinstance(error, vmctl.InvalidState), f"{type(error).__name__}: {error}"
        assert error.state is State.STOPPED
        assert "another caller" in str(error)
        assert system_vm.state is State.STOPPED
        assert system_vm.pid is None
    assert hits, "the destroy never met a save in flight"
