"""The keeper: a tiny parent process for one QEMU run.

``python .../vmctl_qemu/_keeper.py VMDIR RUN_ID [--pass-fd FD] [--log-cap BYTES] [--log PATH]...
-- QEMU ARGV...`` starts QEMU (handing it descriptor FD, its network socket) (cwd = VMDIR), records
its pid and start time in ``run.json``, waits for it, and records its exit status in
``exit.json``. While QEMU runs it keeps ``qemu.log`` and each ``--log`` (the serial console)
under ``--log-cap`` bytes. Without a parent that outlives the vmctl process that started the VM, nobody could
tell a guest that powered itself off (exit 0) from a QEMU that died (a signal or error status).

The keeper also holds a third QMP monitor of QEMU's (one end of a socket pair, handed to QEMU as
``-chardev socket,fd=N``) for QEMU's event stream: after every event that may change the run
state it asks for the run state and rewrites ``run.json`` with it (``runstate``), the event that
caused it (``reason``) and that event's time (``event_time``), so that any process reads the
state without a QMP round trip and waits for a change with inotify. The keeper holds an
``flock`` on ``run.json`` for its whole life (each new file is locked before it is renamed into
place), so a reader trusts the run state only while the keeper lives; when the monitor fails
the keeper drops the run state from ``run.json``, and readers ask QEMU instead.

One keeper lives beside every QEMU, so it costs as little memory as Python allows: it runs
with ``-S -I`` (no ``site``, no site-packages) and imports only modules written in C (``_socket``,
``_json``, ``select``, ``fcntl``; no ``subprocess``, ``json``, ``socket``, ``pathlib`` or psutil,
which pull in ``re`` and ``enum``): QEMU is started with ``os.posix_spawnp``, QMP is parsed
with ``_json``'s scanner, and QEMU's start time is read from ``/proc`` as psutil reads it.
"""

from __future__ import annotations

import _json
import _socket
import fcntl
import os
import select
import stat
import sys
import time

TYPE_CHECKING = False  # typing imports re and enum: mypy reads this name as typing's
if TYPE_CHECKING:
    import signal as _signal  # the same names; signal.py itself imports enum
    from typing import Any
else:
    import _signal


class _JsonContext:
    """What ``_json.make_scanner`` reads its options from (as ``json.JSONDecoder`` has them)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = _json.make_scanner(_JsonContext())  # type: ignore[arg-type]  # it reads the attributes


def loads(text: bytes) -> Any:
    """``json.loads`` of one JSON text, without importing :mod:`json` (which imports ``re``)."""
    line = text.decode().strip()
    try:
        value, end = _scan(line, 0)
    except StopIteration:
        raise ValueError(f"not JSON: {line[:80]!r}") from None
    if end != len(line):
        raise ValueError(f"extra data after JSON: {line[end : end + 80]!r}")
    return value


def dumps(value: object) -> str:
    """``json.dumps`` of what the keeper writes (dicts, lists, strings, numbers, None, bools)."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def atomic_write(path: str, data: bytes) -> None:
    """vmctl.store.atomic_write without importing vmctl: the keeper starts before every QEMU
    and stays for its whole run, so it imports as little as it can."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_time(pid: int) -> float:
    """The start time of ``pid`` in seconds since the epoch, computed as psutil computes it
    (``/proc/PID/stat`` starttime over the clock ticks, plus ``/proc/stat``'s btime), so that
    ``psutil.Process(pid).create_time()`` equals it; 0.0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        with open("/proc/stat", "rb") as f:
            btime = next(line for line in f if line.startswith(b"btime"))
    except (OSError, StopIteration):
        return 0.0
    ticks = float(data[data.rfind(b")") + 2 :].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK") + float(btime.split()[1])


USAGE = "usage: _keeper.py VMDIR RUN_ID [--pass-fd FD] [--log-cap BYTES] [--log PATH]... -- QEMU..."
LOG_CHECK_INTERVAL = 0.1
RUN_RECORD = "run.json"
#: a verb's note that it is moving the run state (see ``_watch.announce_move``)
MOVING = "moving"
EVENT_MONITOR = "vmctlevents"
#: the events that may change QEMU's run state (every change of it goes with STOP or RESUME;
#: the others name the reason); other events (the guest's RTC, NIC filters) are ignored
STATE_EVENTS = frozenset(
    {"STOP", "RESUME", "SHUTDOWN", "RESET", "POWERDOWN", "SUSPEND", "SUSPEND_DISK", "WAKEUP"}
    | {"GUEST_PANICKED", "GUEST_CRASHLOADED", "WATCHDOG", "MIGRATION"}
)


class RunRecord:
    """``run.json``, replaced as a whole (temporary file, then rename) and always locked
    (``flock``) by this keeper: a reader that finds it unlocked knows the keeper is gone and
    its run state no longer follows QEMU."""

    def __init__(self, directory: str, base: dict[str, object]) -> None:
        self.path = os.path.join(directory, RUN_RECORD)
        self.base = base
        self.fd: int | None = None

    def write(self, **state: object) -> None:
        """Replace the file. Where that fails (a full disk) the file in place may be stale:
        its lock goes, so that readers ask QEMU until a write succeeds again."""
        tmp = os.path.join(os.path.dirname(self.path), f".{RUN_RECORD}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            self.release()
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = dumps({**self.base, **state}).encode()
            if os.write(fd, data) != len(data):
                raise OSError("short write")
            os.replace(tmp, self.path)
        except OSError:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self.release()
            return
        self.release()
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class EventMonitor:
    """QEMU's event stream on one end of a socket pair: keeps the run state in ``run.json``.

    After an event that may change the run state it sends ``query-status``, and writes the
    answer with the newest such event seen before the query was sent (QEMU writes every event
    that came before a command to this monitor before the command's answer). An answer that
    events overtook is not written: another query goes out first."""

    def __init__(self, sock: _socket.socket, record: RunRecord) -> None:
        self.sock = sock
        self.record = record
        self.buffer = b""
        self.ready = False
        self.querying = False
        self.stale = True  # an event came after the last query was sent
        self.reason = "start"
        self.event_time = 0.0
        self.sent: tuple[str, float] = (self.reason, self.event_time)
        sock.setblocking(False)

    def send(self, command: str) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(dumps({"execute": command}).encode() + b"\n")
        finally:
            self.sock.setblocking(False)

    def readable(self) -> bool:
        """Handle what QEMU sent; False once the monitor is gone (EOF or a protocol error)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.message(loads(line))
        if self.ready and self.stale and not self.querying:
            self.querying, self.stale = True, False
            self.sent = (self.reason, self.event_time)
            self.send("query-status")
        return True

    def message(self, msg: dict[str, object]) -> None:
        if "QMP" in msg:
            self.send("qmp_capabilities")
        elif "event" in msg:
            if msg["event"] not in STATE_EVENTS:
                return
            stamp = msg.get("timestamp")
            if isinstance(stamp, dict):
                self.event_time = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
            data = msg.get("data")
            detail = data.get("reason") or data.get("status") if isinstance(data, dict) else None
            self.reason = f"{msg['event']}" + (f" ({detail})" if detail else "")
            self.stale = True
        elif "error" in msg:
            raise ValueError(f"QMP error: {msg['error']}")
        elif not self.ready:
            self.ready = True  # qmp_capabilities answered
        elif self.querying:
            self.querying = False
            if not self.stale:
                status = msg["return"]["status"]  # type: ignore[index]
                self.record.write(runstate=status, reason=self.sent[0], event_time=self.sent[1])

    def close(self) -> None:
        """The monitor is gone: the run state no longer follows QEMU (readers ask QEMU)."""
        self.sock.close()
        self.record.write()


def trim_log(path: str, cap: int) -> None:
    """Keep a log QEMU appends to (O_APPEND) under ``cap`` bytes: past it, only its newest half
    stays, after a line saying how much went. Never follows a link; a log that is not a regular
    file is left alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= cap:
            return
        keep = cap // 2
        tail = os.pread(fd, keep, st.st_size - keep)
        os.ftruncate(fd, 0)
        note = f"[vmctl: {st.st_size - len(tail)} bytes of older output dropped (log cap {cap} bytes)]\n"
        os.write(fd, note.encode() + tail)
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    pass_fds: list[int] = []
    logs: list[str] = []
    cap = 0
    while len(argv) > 3 and argv[2] in ("--pass-fd", "--log-cap", "--log"):
        flag, value = argv[2:4]
        del argv[2:4]
        if flag == "--pass-fd":
            pass_fds.append(int(value))
        elif flag == "--log-cap":
            cap = int(value)
        else:
            logs.append(value)
    vmdir, run_id, sep, *qemu = argv
    if sep != "--" or not qemu:
        print(USAGE, file=sys.stderr)
        return 2
    for sig in (_signal.SIGINT, _signal.SIGHUP, _signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_IGN)
    qemu_log = os.path.join(vmdir, "qemu.log")
    ours, qemus = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    qemu += ["-chardev", f"socket,id={EVENT_MONITOR},fd={qemus.fileno()}"]
    qemu += ["-mon", f"chardev={EVENT_MONITOR},mode=control"]
    for fd in (*pass_fds, qemus.fileno()):  # QEMU inherits these, and no other descriptor
        os.set_inheritable(fd, True)
    pid = os.posix_spawnp(
        qemu[0],
        qemu,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, qemu_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsigdef=[_signal.SIGPIPE, _signal.SIGXFSZ],  # as subprocess restores them
    )
    qemus.close()
    for fd in pass_fds:  # QEMU's alone now: its exit closes the socket, and passt quits
        os.close(fd)
    record = RunRecord(
        vmdir, {"run_id": run_id, "keeper_pid": os.getpid(), "qemu_pid": pid, "qemu_created": create_time(pid)}
    )
    record.write()
    if record.fd is None:  # not even run.json could be written
        atomic_write(record.path, dumps(record.base).encode())
    logs.append(qemu_log)
    status = watch(pid, EventMonitor(ours, record), logs, cap)
    atomic_write(
        os.path.join(vmdir, "exit.json"), dumps({"run_id": run_id, "status": status, "ended": time.time()}).encode()
    )
    return 0


def watch(pid: int, monitor: EventMonitor | None, logs: list[str], cap: int) -> int:
    """Until QEMU ends: follow its events, and trim the logs every LOG_CHECK_INTERVAL if capped.
    Returns QEMU's exit status as subprocess reports it (-N: killed by signal N)."""
    poller = select.poll()
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    if monitor is not None:
        poller.register(monitor.sock.fileno(), select.POLLIN)
    try:
        while True:
            ready = poller.poll(int(LOG_CHECK_INTERVAL * 1000) if cap else None)
            if any(fd == pidfd for fd, _ in ready):
                break
            if ready and monitor is not None:
                try:
                    alive = monitor.readable()
                except (ValueError, KeyError, TypeError, OSError):
                    alive = False
                if not alive:
                    poller.unregister(monitor.sock.fileno())
                    monitor.close()
                    monitor = None
            if cap:
                for path in logs:
                    trim_log(path, cap)
    finally:
        os.close(pidfd)
        if monitor is not None:
            monitor.close()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
