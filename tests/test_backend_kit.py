"""The kit backends share (vmctl.backend): locks, tools, usage, ports, the event loop, records."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import vmctl
from vmctl.backend import aio
from vmctl.backend.locking import flock_exclusive, flocked, lock_held
from vmctl.backend.ports import free_port
from vmctl.backend.records import inside, spec_from_record
from vmctl.backend.tools import Background, run_tool
from vmctl.backend.usage import usage_of_process

pytestmark = pytest.mark.timeout(60)


# -- the private event loop ------------------------------------------------------------------------
async def _pid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


def _child_runs_coroutines(results: multiprocessing.Queue[object]) -> None:
    try:
        results.put(aio.run_sync(_pid(), timeout=10))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(repr(exc))


def test_a_forked_child_gets_its_own_event_loop() -> None:
    parent_loop = aio.loop()
    assert aio.run_sync(_pid(), timeout=10) == os.getpid()
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = ctx.Queue()
    child = ctx.Process(target=_child_runs_coroutines, args=(results,))
    child.start()
    try:
        # Without the reset the child submits to a loop whose thread was not forked: it times out.
        assert results.get(timeout=30) == child.pid
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert aio.loop() is parent_loop  # the parent's loop is untouched


def test_run_sync_on_the_loop_thread_raises_instead_of_deadlocking() -> None:
    async def nested() -> int:
        return aio.run_sync(_pid(), timeout=2, what="nested call")

    started = time.monotonic()
    with pytest.raises(aio.LoopThreadError, match=r"nested call: .*own event-loop thread"):
        aio.run_sync(nested(), timeout=10)
    assert time.monotonic() - started < 2  # refused at once, not after the inner deadline
    assert aio.run_sync(_pid(), timeout=10) == os.getpid()  # the loop still serves


# -- flock with a deadline -------------------------------------------------------------------------
def test_flock_waits_until_its_deadline_then_raises_a_typed_timeout(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waited: list[bool] = []
    try:
        assert lock_held(path)
        started = time.monotonic()
        with pytest.raises(vmctl.OperationTimeout, match="the test lock"):
            with flocked(path, "the test lock", 0.3, on_wait=lambda: waited.append(True)):
                pytest.fail("the lock was taken while another holder had it")
        assert 0.3 <= time.monotonic() - started < 5
        assert waited == [True]
    finally:
        os.close(holder)
    assert not lock_held(path)
    with flocked(path, "the test lock", 0.3):
        assert lock_held(path)


def test_flock_is_taken_as_soon_as_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT); "
         "fcntl.flock(fd,fcntl.LOCK_EX); print('held',flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        fd = os.open(path, os.O_RDWR)
        try:
            releaser = threading.Timer(0.2, lambda: holder.stdin and holder.stdin.close())
            releaser.start()
            flock_exclusive(fd, "the test lock", 20)  # another process: returns once it exits
            assert holder.wait(10) == 0
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_directory_can_be_the_lock(tmp_path: Path) -> None:
    with flocked(tmp_path, "the directory", 1):
        assert lock_held(tmp_path)
        with pytest.raises(vmctl.OperationTimeout):
            with flocked(tmp_path, "the directory", 0.1):
                pass


# -- records read back -----------------------------------------------------------------------------
RECORD = {"name": "m", "disk": "/nowhere/base.qcow2", "memory_mib": 128, "shared_dirs": {"data": "/nowhere/data"}}


def test_a_recorded_spec_is_read_back_although_its_files_moved() -> None:
    spec = spec_from_record(
        {**RECORD, "network": {"port_forwards": [{"host_port": 8080, "guest_port": 80, "protocol": "tcp"}]}}
    )
    assert spec.disk == Path("/nowhere/base.qcow2") and spec.memory_mib == 128
    assert spec.shared_dirs == {"data": Path("/nowhere/data")}
    assert spec.network == vmctl.Network(port_forwards=[vmctl.PortForward(8080, 80)])
    with pytest.raises(vmctl.InvalidSpec):
        vmctl.MachineSpec.from_dict(RECORD)  # the validating path refuses it: the files are gone


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"shared_dirs": {"a,b": "/srv"}}, "shared_dirs"),  # becomes a QEMU option and a mount tag
        ({"shared_dirs": {"../x": "/srv"}}, "shared_dirs"),
        ({"shared_dirs": {"data": "/srv\x00"}}, "shared_dirs"),
        ({"shared_dirs": ["data"]}, "shared_dirs"),
        ({"name": "../etc"}, "name"),
        ({"memory_mib": 0}, "memory_mib"),
        ({"cpus": "2"}, "cpus"),
        ({"cmdline": "quiet\ninit=/bin/sh"}, "cmdline"),
        ({"network": {"port_forwards": [{"host_port": 0, "guest_port": 22}]}}, "port forward host_port"),
        ({"network": {"bridge": "br0"}}, "network"),
        ({"disk": None}, "disk"),
        ({"unexpected": 1}, "spec"),
    ],
)
def test_a_recorded_spec_is_validated_again(change: dict[str, object], field: str) -> None:
    with pytest.raises(vmctl.InvalidSpec) as caught:
        spec_from_record({**RECORD, **change})
    assert caught.value.field == field


def test_a_recorded_path_must_stay_inside_the_machine_directory(tmp_path: Path) -> None:
    machine = tmp_path / "m"
    machine.mkdir()
    (machine / "disk.qcow2").write_bytes(b"")
    (tmp_path / "victim").write_bytes(b"keep me")
    (machine / "link").symlink_to(tmp_path / "victim")
    assert inside(machine, "disk.qcow2") == machine / "disk.qcow2"
    assert inside(machine, str(machine / "disk.qcow2")) == machine / "disk.qcow2"
    for escaping in ("../victim", str(tmp_path / "victim"), "link", "/etc/passwd", ""):
        with pytest.raises(vmctl.InvalidSpec, match="overlay"):
            inside(machine, escaping, "overlay")


# -- tools, usage, ports ---------------------------------------------------------------------------
def test_run_tool_in_binary_mode_with_a_directory_and_extra_environment(tmp_path: Path) -> None:
    script = (
        "import os,sys; out = sys.stdout.buffer; out.write(sys.stdin.buffer.read()[::-1]); "
        "out.write(os.getcwd().encode() + b'|' + os.environ['X'].encode() + b'|' + os.environ['LC_ALL'].encode())"
    )
    proc = run_tool(
        [sys.executable, "-c", script], input=b"\x00\xff", cwd=tmp_path, env={"X": "y"}, text=False, timeout=30
    )
    assert proc.stdout == b"\xff\x00" + os.fsencode(tmp_path) + b"|y|C"
    with pytest.raises(vmctl.BackendError) as caught:
        run_tool(
            [sys.executable, "-c", "import sys; sys.stderr.buffer.write(b'bad \\xff'); sys.exit(3)"],
            text=False,
            timeout=30,
        )
    assert caught.value.status == 3 and "bad" in str(caught.value)


def test_a_background_tool_is_killed_at_its_deadline_and_reports_when_it_ends() -> None:
    tools = Background()
    ended: list[subprocess.CompletedProcess[str]] = []
    done = threading.Event()

    def record(proc: subprocess.CompletedProcess[str]) -> None:
        ended.append(proc)
        done.set()

    tools.spawn([sys.executable, "-c", "print('out')"], timeout=30, on_exit=record)
    assert done.wait(30)
    assert ended[0].returncode == 0 and ended[0].stdout == "out\n"
    started = time.monotonic()
    tools.spawn([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5, on_exit=record)
    while tools._running and time.monotonic() - started < 30:
        time.sleep(0.05)
    assert not tools._running and len(ended) == 1  # killed: no result reported
    with pytest.raises(vmctl.BackendError, match="cannot run"):
        tools.spawn(["/nonexistent/tool"], timeout=1)


def test_usage_of_a_process_and_of_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; sum(range(10**7)); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        usage = usage_of_process("m", child.pid)
        while (usage.cpu_seconds or 0) < 0.05 and time.monotonic() < deadline:
            usage = usage_of_process("m", child.pid)
        assert usage.machine == "m" and (usage.cpu_seconds or 0) >= 0.05 and (usage.memory_bytes or 0) > 0
        assert usage_of_process("m", child.pid, disk_read_bytes=7).disk_read_bytes == 7
    finally:
        child.kill()
        child.wait()
    gone = usage_of_process("m", child.pid)
    assert (gone.cpu_seconds, gone.memory_bytes, gone.disk_read_bytes) == (None, None, None)
    assert usage_of_process("m", None).cpu_seconds is None


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_old_import_paths_still_work() -> None:
    import vmctl.aio
    import vmctl.store
    import vmctl.tools
    import vmctl.usage
    from vmctl.backend import aio as new_aio
    from vmctl.backend import store, tools, usage

    assert vmctl.store.MachineStore is store.MachineStore and vmctl.tools.run_tool is tools.run_tool
    assert vmctl.usage.process_tree_usage is usage.process_tree_usage and vmctl.aio.run_sync is new_aio.run_sync
