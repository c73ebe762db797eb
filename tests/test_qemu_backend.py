"""QEMU-specific behaviour beyond the contract suite: accelerators, odd paths, event loops."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.display import machine_html
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


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def _reads(vm: vmctl.Machine) -> list[object]:
    """Everything a user or a notebook does that reads the machine."""
    return [vm.state, repr(vm), machine_html(vm), vm.pid, vm.usage(), vm.spec]


def test_reading_the_state_of_a_machine_whose_qemu_died_changes_nothing(tmp_path: Path, guest: TestGuest) -> None:
    """QEMU dies while a suspend's partial state file lies about: reads (state, repr, the
    notebook view, pid, usage) leave every file as it was; the next verb cleans up."""
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, "dead-1", tmp_path / "console.log"))
    assert isinstance(vm, QemuMachine)
    try:
        vm.start(timeout=60)
        partial = vm.dir / "state.bin.tmp"
        partial.write_bytes(b"half a saved state")
        pid = vm.pid
        assert pid is not None
        os.kill(pid, 9)
        assert vm.wait_for(vmctl.State.CRASHED, timeout=20) is vmctl.State.CRASHED
        keeper = json.loads((vm.dir / "run.json").read_bytes())["keeper_pid"]
        _wait_gone(keeper, 10)
        before = _files(vm.dir)
        for _ in range(3):
            assert _reads(vm)[0] is vmctl.State.CRASHED
        assert _files(vm.dir) == before
        vm.start(timeout=60)  # a verb settles the leftovers first
        assert not partial.exists()
        assert vm.state is vmctl.State.RUNNING
    finally:
        vm.destroy()


def test_reading_the_state_never_ends_a_leftover_qemu(tmp_path: Path, guest: TestGuest) -> None:
    """A poweroff killed after it recorded STOPPED leaves QEMU running: reads report STOPPED and
    leave that QEMU alone; the next verb ends it before it acts."""
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, "left-1", tmp_path / "console.log"))
    assert isinstance(vm, QemuMachine)
    try:
        vm.start(timeout=60)
        pid = vm.pid
        assert pid is not None
        hv.store.update(vm.name, status="stopped")  # what the killed poweroff had done
        before = _files(vm.dir)
        for _ in range(3):
            state, text, *_ = _reads(vm)
            assert state is vmctl.State.STOPPED and "stopped" in str(text)
        assert vm.pid is None
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert _files(vm.dir) == before
        vm.start(timeout=60)
        _wait_gone(pid, 10)
        assert vm.state is vmctl.State.RUNNING and vm.pid not in (None, pid)
    finally:
        vm.destroy()


def test_reading_the_state_never_ends_a_qemu_whose_guest_powered_off(tmp_path: Path, guest: TestGuest) -> None:
    """A graceful restart killed after the power button keeps QEMU in its "shutdown" run state
    once the guest is off: reads report STOPPED without ending QEMU; the next verb ends it."""
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    log = tmp_path / "console.log"
    vm = hv.create(_spec(guest, "husk-1", log))
    assert isinstance(vm, QemuMachine)
    try:
        vm.start(timeout=60)
        _wait_ready(log, 90)
        pid = vm.pid
        assert pid is not None
        with vm._monitor() as s:  # what the killed restart had done
            s.execute("set-action", {"shutdown": "pause"})
            s.execute("system_powerdown")
        deadline = time.monotonic() + 60
        while vm._query_status() != "shutdown":
            assert time.monotonic() < deadline, "the guest did not power off"
            time.sleep(0.1)
        before = _files(vm.dir)
        for _ in range(3):
            assert _reads(vm)[0] is vmctl.State.STOPPED
        assert psutil.pid_exists(pid) and vm._query_status() == "shutdown"
        assert _files(vm.dir) == before
        vm.start(timeout=60)
        _wait_gone(pid, 10)
        assert vm.state is vmctl.State.RUNNING
    finally:
        vm.destroy()


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.05)


def test_a_machine_without_a_qcow2_disk_says_it_has_no_snapshots(tmp_path: Path, guest: TestGuest) -> None:
    """QEMU snapshots live in a qcow2 image: a machine writing to a raw image directly has none,
    and says so in its own capabilities (its backend's still have them)."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(1 << 20))
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    spec = vmctl.MachineSpec(name="raw-1", disk=raw, overlay=False, kernel=guest.kernel, initrd=guest.initrd)
    vm = hv.create(spec)
    other = hv.create(_spec(guest, "ovl-1", tmp_path / "console.log"))
    try:
        assert hv.capabilities.snapshots and other.capabilities.snapshots
        assert not vm.capabilities.snapshots and not vm.capabilities.live_snapshots
        for call in (lambda: vm.snapshot("s"), vm.snapshots, lambda: vm.revert("s")):
            with pytest.raises(vmctl.Unsupported, match="qcow2"):
                call()
        assert vm.state is vmctl.State.STOPPED
    finally:
        vm.destroy()
        other.destroy()
    assert raw.stat().st_size == 1 << 20
