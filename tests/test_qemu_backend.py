"""QEMU-specific behaviour beyond the contract suite: accelerators, odd paths, event loops."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest
from vmctl_qemu._machine import QemuMachine


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


def _spec(guest: TestGuest, name: str, log: Path) -> vmctl.MachineSpec:
    return vmctl.MachineSpec(
        name=name,
        disk=guest.disk,
        kernel=guest.kernel,
        initrd=guest.initrd,
        cmdline=guest.cmdline,
        memory_mib=128,
        serial_log=log,
    )


def _wait_ready(log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while b"VMCTL-GUEST READY" not in (log.read_bytes() if log.exists() else b""):
        assert time.monotonic() < deadline, "guest did not boot"
        time.sleep(0.1)


def test_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(vmctl.InvalidSpec):
        vmctl.connect("qemu", state_dir=tmp_path, accel="warp")


def test_kvm_that_hangs_the_guest_never_hangs_vmctl(tmp_path: Path, guest: TestGuest) -> None:
    """On these machines a guest under KVM hangs after loading its kernel: every verb must still
    return by its deadline, and a graceful stop must fall back to a forced one.

    Under QEMU 7.2 the hung guest just ignores the power button; under QEMU 10.0 on some hosts
    its machine turns ``crashed`` (KVM internal error) while stop waits. Either way the caller
    asked for a stopped machine and a forced stop gives one: stop returns False and the machine
    is STOPPED, never a CRASHED machine and an InvalidState (see the contract test
    ``test_a_machine_that_crashes_while_stopping_ends_stopped``, which forces that case)."""
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="kvm")
    vm = hv.create(_spec(guest, "kvm-1", tmp_path / "console.log"))
    started = time.monotonic()
    try:
        try:
            vm.start(timeout=30)
        except vmctl.BackendError as exc:  # no usable /dev/kvm: a typed error, promptly
            assert "kvm" in str(exc).lower()
            assert time.monotonic() - started < 30
            return
        assert vm.state is vmctl.State.RUNNING
        graceful = vm.stop(timeout=5)
        assert vm.state is vmctl.State.STOPPED
        assert vm.pid is None
        if not graceful:  # the hung guest could not see the button: forced at the deadline
            assert time.monotonic() - started < 5 + 30 + 30
    finally:
        vm.destroy()
    assert hv.machines() == []


def test_paths_with_commas_spaces_and_long_names(tmp_path: Path, guest: TestGuest) -> None:
    """QEMU's option syntax treats commas specially and AF_UNIX sockets allow ~108 bytes."""
    deep = tmp_path / ("a, b " + "x" * 60) / ("c" * 60)
    deep.mkdir(parents=True)
    log = deep / "console, log.txt"
    hv = vmctl.connect("qemu", state_dir=deep / "state", accel="tcg")
    vm = hv.create(_spec(guest, "n" * 64, log))
    assert len(str(hv.store.path(vm.name) / "qmp.sock")) > 108
    try:
        vm.start(timeout=60)
        _wait_ready(log, 90)
        vm.pause()
        assert vm.state is vmctl.State.PAUSED
        vm.resume()
    finally:
        vm.destroy()


def test_the_sync_api_works_inside_a_running_event_loop(tmp_path: Path, guest: TestGuest) -> None:
    """A Jupyter kernel runs an event loop in the main thread; vmctl must not need that loop."""
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, "loop-1", tmp_path / "console.log"))

    async def notebook_cell() -> vmctl.State:
        vm.start(timeout=60)
        vm.pause()
        return vm.state

    try:
        assert asyncio.run(notebook_cell()) is vmctl.State.PAUSED
    finally:
        vm.destroy()


def test_a_qemu_that_fails_to_start_reports_its_stderr(tmp_path: Path, guest: TestGuest) -> None:
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, "bad-1", tmp_path / "console.log"))
    assert isinstance(vm, QemuMachine)
    overlay = hv.store.path(vm.name) / "disk.qcow2"
    overlay.write_bytes(b"this is not a qcow2 image")
    with pytest.raises(vmctl.BackendError) as err:
        vm.start(timeout=60)
    assert "qcow2" in str(err.value).lower() or "image" in str(err.value).lower()
    assert vm.state is vmctl.State.STOPPED
    assert "disk.qcow2" in vm.hypervisor_log()
    vm.destroy()
    assert not hv.store.path("bad-1").exists()


def test_a_killed_qemu_shows_crashed_and_keeps_its_log(tmp_path: Path, guest: TestGuest) -> None:
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, "crash-1", tmp_path / "console.log"))
    assert isinstance(vm, QemuMachine)
    try:
        vm.start(timeout=60)
        pid = vm.pid
        assert pid is not None
        os.kill(pid, 9)
        assert vm.wait_for(vmctl.State.CRASHED, timeout=20) is vmctl.State.CRASHED
        assert vm.pid is None
        assert "qemu-system-x86_64" in vm.hypervisor_log()
        with pytest.raises(vmctl.InvalidState):
            vm.pause()
    finally:
        vm.destroy()
