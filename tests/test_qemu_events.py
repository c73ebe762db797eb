"""The QEMU backend's event-held state (issue 17): the keeper follows QEMU's QMP events and
writes the run state to ``runstate.json``; reads need no QMP round trip, waits wake on inotify,
and a simple verb opens one QMP session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import vmctl
import vmctl.interface
import vmctl_qemu._qmp as qmp_module
from vmctl import State
from vmctl.testing import wait_until
from vmctl_qemu._command import STATE_SOCKET

from .qemu_machines import guest_machine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[vmctl.Machine]:
    with guest_machine(tmp_path, "events", serial_log=tmp_path / "console.log") as machine:
        yield machine


def _held(vm: vmctl.Machine) -> dict[str, object]:
    data: dict[str, object] = json.loads((vm.dir / "run.json").read_bytes())  # type: ignore[attr-defined]
    return data


def test_state_is_read_while_the_query_monitor_is_held_by_another_client(vm: vmctl.Machine) -> None:
    """QEMU serves one client per monitor: with the query socket taken by someone else, a QMP
    read would wait and report UNKNOWN; the keeper's event-held state answers at once."""
    vm.start()
    squatter = socket.socket(socket.AF_UNIX)
    squatter.connect(str(vm.dir / STATE_SOCKET))  # type: ignore[attr-defined]
    try:
        assert squatter.recv(4096).startswith(b'{"QMP"')  # QEMU greeted it: the monitor is taken
        assert vm.state is State.RUNNING
        vm.pause()
        assert vm.state is State.PAUSED
        assert str(_held(vm)["reason"]).startswith("STOP")
        vm.resume()
        assert vm.state is State.RUNNING
        assert str(_held(vm)["reason"]).startswith("RESUME")
    finally:
        squatter.close()


def test_a_simple_verb_opens_one_qmp_session(vm: vmctl.Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """pause and resume: the state check under the lock reads the keeper's state, then one
    session sends the command (before: a session to settle, one to check, one to command)."""
    vm.start()
    opened: list[Path] = []
    original = qmp_module.session

    def counting(socket_path: Path, timeout: float = 10) -> object:
        opened.append(socket_path)
        return original(socket_path, timeout)

    monkeypatch.setattr(qmp_module, "session", counting)
    vm.pause()
    assert len(opened) == 1, opened
    assert vm.state is State.PAUSED
    vm.resume()
    assert len(opened) == 2, opened
    assert vm.state is State.RUNNING
    assert len(opened) == 2, "a state read opened a QMP session"


@contextlib.contextmanager
def _no_sleep_in_waits() -> Iterator[None]:
    """vmctl's generic wait loop (vmctl.interface) polls with time.sleep: make any sleep there fail."""
    real_time = vmctl.interface.time

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"a wait slept {seconds} s (a polling loop)")

    class NoSleepTime:
        def __getattr__(self, name: str) -> object:
            return no_sleep if name == "sleep" else getattr(real_time, name)

    vmctl.interface.time = NoSleepTime()  # type: ignore[assignment]
    try:
        yield
    finally:
        vmctl.interface.time = real_time


def _count_reads(vm: vmctl.Machine) -> tuple[list[float], threading.Condition]:
    reads: list[float] = []
    changed = threading.Condition()
    original = type(vm)._get_state

    def counting_get_state(self: vmctl.Machine) -> State:
        state = original(self)  # type: ignore[arg-type]
        with changed:
            reads.append(time.monotonic())
            changed.notify_all()
        return state

    vm._get_state = counting_get_state.__get__(vm)  # type: ignore[method-assign]
    return reads, changed


def test_a_waiter_sleeps_until_the_event_wakes_it(vm: vmctl.Machine) -> None:
    """While nothing happens a waiter reads the state no more (a 50 ms poll would read it 20
    times a second); a pause by another process's handle wakes it at once."""
    vm.start()
    other = vmctl.connect("qemu", state_dir=vm.hypervisor.store.root, accel="tcg").machine(vm.name)  # type: ignore[attr-defined]
    reads, changed = _count_reads(vm)
    result: list[State | BaseException] = []

    def wait() -> None:
        try:
            result.append(vm.wait_for(State.PAUSED, timeout=120))
        except BaseException as exc:
            result.append(exc)

    with _no_sleep_in_waits():
        waiter = threading.Thread(target=wait)
        waiter.start()
        with changed:
            assert changed.wait_for(lambda: len(reads) >= 2, 30), "the waiter did not start waiting"
            settled = len(reads)
            # nothing changes: a polling waiter would read the state again within this second
            assert not changed.wait_for(lambda: len(reads) > settled, 1.0), f"{len(reads) - settled} reads while idle"
        other.pause()
        waiter.join(30)
    assert result == [State.PAUSED]
    assert len(reads) <= settled + 3, f"{len(reads) - settled} reads for one change"


def test_wait_for_a_guest_power_off_wakes_on_qemus_exit(vm: vmctl.Machine) -> None:
    """The guest powers itself off: the keeper's exit record wakes the waiter (no sleep)."""
    vm.start()
    log = vm.spec.serial_log
    assert log is not None
    wait_until(lambda: b"VMCTL-GUEST READY" in (log.read_bytes() if log.exists() else b""), 120, "guest boot")
    with _no_sleep_in_waits():
        vm._do_request_shutdown()  # type: ignore[attr-defined]
        assert vm.wait_for(State.STOPPED, timeout=120) is State.STOPPED


def test_state_changes_follow_events_from_another_caller(vm: vmctl.Machine) -> None:
    """A watcher sees a pause and a resume made by another handle, each as it happens."""
    vm.start()
    other = vmctl.connect("qemu", state_dir=vm.hypervisor.store.root, accel="tcg").machine(vm.name)  # type: ignore[attr-defined]
    seen: list[State] = []
    first = threading.Event()

    def watch() -> None:
        for state in vm.state_changes(timeout=120):
            seen.append(state)
            first.set()
            if len(seen) == 3:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(60)
    other.pause()
    wait_until(lambda: len(seen) >= 2, 60, "the watcher saw the pause")
    other.resume()
    watcher.join(60)
    assert seen == [State.RUNNING, State.PAUSED, State.RUNNING]


def test_a_killed_keeper_hands_the_state_back_to_qmp(vm: vmctl.Machine) -> None:
    """The file is trusted only while its keeper lives: with the keeper killed (QEMU runs on),
    the state is QEMU's own answer, and verbs still work."""
    vm.start()
    run = json.loads((vm.dir / "run.json").read_bytes())  # type: ignore[attr-defined]
    keeper = psutil.Process(run["keeper_pid"])
    os.kill(keeper.pid, signal.SIGKILL)
    keeper.wait(30)
    assert vm.state is State.RUNNING
    vm.pause()
    assert vm.state is State.PAUSED
    vm.resume()
    assert vm.state is State.RUNNING


def test_the_starting_process_keeps_no_thread_per_machine(vm: vmctl.Machine) -> None:
    """Keepers are reaped on vmctl's one event-loop thread (before: one waiting thread per
    machine started), and reaped they are: no zombie is left when their machines go."""
    vm.start()
    me = psutil.Process()
    threads = me.num_threads()
    hv = vm.hypervisor
    others = [hv.create(vmctl.MachineSpec(name=f"more-{i}", disk=vm.spec.disk, memory_mib=64)) for i in range(3)]
    try:
        for machine in others:
            machine.start()
        assert me.num_threads() == threads
    finally:
        for machine in others:
            machine.destroy()
    wait_until(lambda: not [c for c in me.children() if c.status() == psutil.STATUS_ZOMBIE], 30, "the keepers reaped")


KILLED_AFTER_COMMAND = """
import os, signal, sys
import vmctl
import vmctl_qemu._qmp as qmp
execute = qmp.QmpSession.execute
def dying(self, command, *args, **kwargs):
    answer = execute(self, command, *args, **kwargs)
    if command == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)  # the command went through; the verb never waits
    return answer
qmp.QmpSession.execute = dying
vm = vmctl.connect("qemu", state_dir=sys.argv[1], accel="tcg").machine("events")
getattr(vm, sys.argv[2])()
"""


@pytest.mark.parametrize(
    "verb,command,before,after", [("resume", "cont", "pause", State.RUNNING), ("pause", "stop", None, State.PAUSED)]
)
def test_a_verb_killed_after_its_command_leaves_no_stale_state(
    vm: vmctl.Machine, tmp_path: Path, verb: str, command: str, before: str | None, after: State
) -> None:
    """The verb's process dies once QEMU has obeyed, before the keeper has written the event
    (here the keeper is stopped, as a busy host may hold it back): the next process must see the
    move, not the keeper's older state, and the keeper's state is trusted again once it is back."""
    vm.start()
    if before:
        getattr(vm, before)()
    keeper = psutil.Process(_held(vm)["keeper_pid"])  # type: ignore[arg-type]
    held_before = _held(vm)["runstate"]
    keeper.suspend()
    try:
        child = subprocess.run(
            [sys.executable, "-c", KILLED_AFTER_COMMAND, str(tmp_path / "state"), verb, command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert _held(vm)["runstate"] == held_before  # the keeper has not written the move
        fresh = vm.hypervisor.machine("events")
        assert fresh.state is after
    finally:
        keeper.resume()
    wait_until(lambda: _held(vm)["runstate"] == after.value, 30, "the keeper caught up")
    assert vm.state is after
    vm.poweroff()
    assert not (vm.dir / "moving").exists()  # type: ignore[attr-defined]


def _counting_sessions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The QMP sessions opened to the query monitor (the verbs' own go to the other)."""
    opened: list[Path] = []
    original = qmp_module.session

    def counting(socket_path: Path, timeout: float = 10) -> object:
        if socket_path.name == STATE_SOCKET:
            opened.append(socket_path)
        return original(socket_path, timeout)

    monkeypatch.setattr(qmp_module, "session", counting)
    return opened


def _wait_console(vm: vmctl.Machine, text: str) -> None:
    log = vm.spec.serial_log
    assert log is not None
    wait_until(lambda: log.exists() and text.encode() in log.read_bytes(), 120, text)


def test_a_paused_machines_disk_counts_are_kept_until_it_moves(
    vm: vmctl.Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused guest does no disk I/O: the first usage after a pause asks QEMU, the readers
    after it (usage, usage_all) read the kept answer; once the machine has run again the
    kept answer is not used (the guest read its disk meanwhile)."""
    vm.start()
    vm.pause()  # before the guest mounted its disk
    opened = _counting_sessions(monkeypatch)
    first = vm.usage()
    assert len(opened) == 1
    kept = json.loads((vm.dir / "blockio.json").read_bytes())  # type: ignore[attr-defined]
    assert kept["key"] == [vm._record()["run_id"], _held(vm)["event_time"]]  # type: ignore[attr-defined]
    again, every = vm.usage(), vm.hypervisor.usage_all()
    assert len(opened) == 1, "a paused machine's usage asked QEMU again"
    assert (again.disk_read_bytes, again.disk_write_bytes) == (first.disk_read_bytes, first.disk_write_bytes)
    assert every[vm.name].disk_read_bytes == first.disk_read_bytes and every[vm.name].cpu_seconds is not None

    vm.resume()
    _wait_console(vm, "VMCTL-GUEST DISK mounted")
    running = vm.usage()
    assert len(opened) == 2  # running: QEMU is asked every time
    assert running.disk_read_bytes is not None and first.disk_read_bytes is not None
    assert running.disk_read_bytes > first.disk_read_bytes
    vm.pause()
    paused = vm.usage()
    assert len(opened) == 3 and paused.disk_read_bytes is not None
    assert paused.disk_read_bytes >= running.disk_read_bytes
    assert vm.usage().disk_read_bytes == paused.disk_read_bytes
    assert len(opened) == 3


def test_the_kept_counts_are_not_trusted_without_the_keeper(vm: vmctl.Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept answer is keyed by the pause the keeper holds: with the keeper gone (nobody
    follows QEMU's events) every usage asks QEMU; a new run starts without the old file."""
    vm.start()
    vm.pause()
    vm.usage()
    assert (vm.dir / "blockio.json").exists()  # type: ignore[attr-defined]
    keeper = psutil.Process(_held(vm)["keeper_pid"])  # type: ignore[arg-type]
    os.kill(keeper.pid, signal.SIGKILL)
    keeper.wait(30)
    opened = _counting_sessions(monkeypatch)
    assert vm.usage().disk_read_bytes is not None
    assert vm.usage().disk_read_bytes is not None
    assert len(opened) == 2
    vm.poweroff()
    vm.start()
    assert not (vm.dir / "blockio.json").exists()  # type: ignore[attr-defined]


def test_usage_all_measures_each_machine_as_usage_does(vm: vmctl.Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """usage_all: every machine vmctl created (stopped, running, paused), the same fields as
    its own usage(), and no scan of the whole process table per machine."""
    hv = vm.hypervisor
    other = hv.create(vmctl.MachineSpec(name="other", disk=vm.spec.disk, memory_mib=64))
    idle = hv.create(vmctl.MachineSpec(name="idle", disk=vm.spec.disk, memory_mib=64))
    try:
        vm.start()
        other.start()
        other.pause()
        scans: list[int] = []
        real_children, real_iter = psutil.Process.children, psutil.process_iter

        def children(self: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
            scans.append(self.pid)
            return real_children(self, recursive)

        def process_iter(*args: object, **kwargs: object) -> Iterator[psutil.Process]:
            scans.append(0)
            return real_iter(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(psutil.Process, "children", children)
        monkeypatch.setattr(psutil, "process_iter", process_iter)
        every = hv.usage_all()
        assert len(scans) <= 1, scans
        assert sorted(every) == ["events", "idle", "other"]
        assert every["idle"] == vmctl.Usage(machine="idle", taken_at=every["idle"].taken_at)
        for name in ("events", "other"):
            one = hv.machine(name).usage()
            assert every[name].memory_bytes and every[name].cpu_seconds is not None
            assert every[name].disk_read_bytes is not None and every[name].disk_write_bytes is not None
            assert one.cpu_seconds is not None and one.cpu_seconds >= every[name].cpu_seconds
        assert every["other"].disk_read_bytes == hv.machine("other").usage().disk_read_bytes
    finally:
        other.destroy()
        idle.destroy()


def test_cpu_seconds_alone_asks_qemu_nothing(vm: vmctl.Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What vmctl-boinc polls every second for credit: the process tree's CPU time, no QMP
    session for the disk counters that usage() reads."""
    assert vm.cpu_seconds() is None  # no process yet
    vm.start()
    _wait_console(vm, "VMCTL-GUEST READY")
    opened: list[Path] = []
    original = qmp_module.session

    def counting(socket_path: Path, timeout: float = 10) -> object:
        opened.append(socket_path)
        return original(socket_path, timeout)

    monkeypatch.setattr(qmp_module, "session", counting)
    first = vm.cpu_seconds()
    assert opened == [], "cpu_seconds() opened a QMP session"
    assert first is not None and first > 0
    full = vm.usage().cpu_seconds
    assert opened, "usage() no longer reads QEMU's disk counters: this test proves nothing"
    assert full is not None and full >= first
    vm.poweroff()
    assert vm.cpu_seconds() is None
