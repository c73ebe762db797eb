"""A short-lived, synchronous QMP session: a blocking UNIX socket in the calling thread.

QEMU's QMP socket serves one client at a time, and vmctl machines are controlled from several
processes, so every operation opens its own session and closes it at once. A session costs what
QMP itself costs: the capabilities negotiation goes out at once, the first command right after
QEMU's greeting (a query even before it; QEMU runs a client's commands in order, and the
negotiation switches the monitor to command mode), and no event loop or other thread is
involved (before: qemu.qmp on vmctl's event-loop thread, three hand-offs between threads per
command). Replies are matched by id; events in between are
skipped; every read is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vmctl.errors import BackendError, ErrorCode, OperationTimeout

log = logging.getLogger("vmctl.qemu.qmp")
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # its own logs duplicate our errors

_UNIX_PATH_MAX = 100
#: the longest line (one QMP message) a session reads: QEMU's answers to vmctl's commands are
#: a few KiB; a peer that sends more without a newline is not QEMU
MAX_MESSAGE = 16 << 20

#: QMP's error classes (qapi/error.json) in vmctl's vocabulary. QEMU reports nearly every
#: failure as GenericError, which says nothing about its kind.
QMP_CODES: dict[str, ErrorCode] = {
    "CommandNotFound": ErrorCode.UNSUPPORTED,
    "DeviceNotActive": ErrorCode.INVALID_STATE,
    "DeviceNotFound": ErrorCode.NOT_FOUND,
    "KVMMissingCap": ErrorCode.UNSUPPORTED,
    "GenericError": ErrorCode.UNKNOWN,
}


def qmp_code(error_class: str) -> ErrorCode:
    """The :class:`ErrorCode` of a QMP error class.

    >>> qmp_code("DeviceNotFound"), qmp_code("SomethingNew")
    (<ErrorCode.NOT_FOUND: 'not_found'>, <ErrorCode.UNKNOWN: 'unknown'>)
    """
    return QMP_CODES.get(error_class, ErrorCode.UNKNOWN)


def backoff(first: float = 0.001, longest: float = 0.02) -> Iterator[float]:
    """Pauses for polling QEMU: short at first (most jobs and migrations of an idle guest end
    within milliseconds), doubling up to ``longest``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, longest)


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """Yield a path to ``path`` short enough for AF_UNIX (108 bytes), via /proc/self/fd if needed."""
    text = str(path)
    if len(text.encode()) < _UNIX_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class MonitorLost(BackendError):
    """QEMU's monitor went away under a command or a connect (QEMU ended, or was ended by
    another caller): the machine's state, read again, says what happened."""


def _lost(what: str, command: str, exc: BaseException | str) -> MonitorLost:
    text = exc if isinstance(exc, str) else str(exc) or type(exc).__name__
    native = "EOFError" if isinstance(exc, str) else type(exc).__name__
    return MonitorLost(f"{what}: {text}", command=command, code=ErrorCode.CONNECTION, native=native)


class QmpSession:
    """One connected QMP session (use :func:`session`)."""

    def __init__(self, sock: socket.socket, socket_path: Path) -> None:
        self._sock = sock
        self.socket_path = socket_path
        self._buffer = b""
        self._ids = itertools.count(1)
        self._greeted = False
        self._negotiating: str | None = None
        #: send commands before QEMU's greeting (see :func:`locked_session`)
        self.eager = False

    def _send(self, message: dict[str, Any], command: str, fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self._sock, [data], list(fds))
            else:
                self._sock.sendall(data)
        except TimeoutError as exc:
            raise OperationTimeout(f"QMP {command}", self._sock.gettimeout() or 0) from exc
        except OSError as exc:
            raise _lost(f"QMP {command} failed", command, exc) from exc

    def _message(self, command: str, deadline: float, timeout: float) -> dict[str, Any]:
        """The next message QEMU sends (bounded, with the deadline)."""
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimeout(f"QMP {command}", timeout)
            if len(self._buffer) > MAX_MESSAGE:
                raise _lost(f"QMP {command} failed", command, f"a message over {MAX_MESSAGE} bytes")
            try:
                self._sock.settimeout(left)
                data = self._sock.recv(65536)
            except TimeoutError:
                raise OperationTimeout(f"QMP {command}", timeout) from None
            except OSError as exc:
                raise _lost(f"QMP {command} failed", command, exc) from exc
            if not data:
                raise _lost(f"QMP {command} failed", command, "QEMU closed the monitor")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise _lost(f"QMP {command} failed", command, f"not QMP: {exc}") from exc
        if not isinstance(message, dict):
            raise _lost(f"QMP {command} failed", command, "not QMP: not an object")
        return message

    def _greeting(self, command: str, deadline: float, timeout: float) -> None:
        """QEMU greets a client once it serves it (a monitor serves one client at a time)."""
        if not self._greeted:
            if "QMP" not in self._message(command, deadline, timeout):
                raise _lost(f"QMP {command} failed", command, "no QMP greeting")
            self._greeted = True

    def _reply(self, ident: str, command: str, deadline: float, timeout: float) -> Any:
        self._greeting(command, deadline, timeout)
        while True:
            message = self._message(command, deadline, timeout)
            if message.get("id") != ident or ("return" not in message and "error" not in message):
                continue  # an event, or the answer to an earlier command given up on
            if "error" in message:
                error = message["error"] if isinstance(message["error"], dict) else {}
                error_class = str(error.get("class", "GenericError"))
                raise BackendError(
                    f"QEMU refused {command}: {error.get('desc', error)}",
                    command=command,
                    code=qmp_code(error_class),
                    native=error_class,
                )
            return message["return"]

    def _call(
        self, command: str, arguments: Mapping[str, Any] | None, timeout: float, fds: tuple[int, ...] = ()
    ) -> Any:
        deadline = time.monotonic() + timeout
        ident = f"vmctl-{next(self._ids)}"
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = dict(arguments)
        if not self.eager and not command.startswith("query-"):
            # a command that changes something goes out only once QEMU serves this client:
            # one given up on while another client holds the monitor must not run later
            self._greeting(command, deadline, timeout)
        self._sock.settimeout(timeout)
        self._send(message, command, fds)
        if self._negotiating is not None:  # sent with the first command: its answer comes first
            negotiation, self._negotiating = self._negotiating, None
            self._reply(negotiation, "qmp_capabilities", deadline, timeout)
        return self._reply(ident, command, deadline, timeout)

    def _negotiate(self) -> None:
        """Ask for command mode; the answer is read with the first command's."""
        self._negotiating = "vmctl-0"
        self._sock.settimeout(5)
        self._send({"execute": "qmp_capabilities", "id": self._negotiating}, "qmp_capabilities")

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 30) -> Any:
        """Run one QMP command; raise BackendError with QEMU's error text on failure."""
        return self._call(command, arguments, timeout)

    def send_fd(self, fd: int, name: str, timeout: float = 10) -> None:
        """Pass an open file descriptor to QEMU under ``name`` (QMP getfd, the descriptor
        attached to the command: QEMU's monitor keeps what arrives with the data it reads)."""
        try:
            self._call("getfd", {"fdname": name}, timeout, fds=(fd,))
        except MonitorLost:
            raise
        except BackendError as exc:
            raise BackendError(
                f"passing a file descriptor to QEMU failed: {exc}", command="getfd", code=exc.code, native=exc.native
            ) from exc

    def wait_job(self, job_id: str, timeout: float) -> None:
        """Wait for a QMP job to conclude, dismiss it, raise if it failed."""
        deadline = time.monotonic() + timeout
        pauses = backoff()
        while True:
            jobs = {j["id"]: j for j in self.execute("query-jobs")}
            job = jobs.get(job_id)
            if job is None:
                raise BackendError(f"QEMU lost job {job_id}", command="query-jobs")
            if job["status"] == "concluded":
                self.execute("job-dismiss", {"id": job_id})
                if job.get("error"):
                    raise BackendError(f"QEMU job {job_id} failed: {job['error']}", command=job_id)
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(BackendError):
                    self.execute("job-cancel", {"id": job_id})
                raise OperationTimeout(f"QEMU job {job_id}", timeout)
            time.sleep(next(pauses))


@contextlib.contextmanager
def locked_session(socket_path: Path, timeout: float = 10) -> Iterator[QmpSession]:
    """A :func:`session` on a machine's own command monitor, which only the holder of the
    machine's lock uses: no other client can hold it, so commands go out at once, before
    QEMU's greeting (one exchange with QEMU for the capabilities and the command)."""
    with session(socket_path, timeout) as qmp:
        qmp.eager = True
        yield qmp


@contextlib.contextmanager
def session(socket_path: Path, timeout: float = 10) -> Iterator[QmpSession]:
    """Connect to QEMU's QMP socket, negotiate (with the first command), yield a session, close."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        with _reachable(socket_path) as address:
            try:
                sock.connect(address)
            except TimeoutError:
                raise OperationTimeout("QMP connect", timeout) from None
            except OSError as exc:
                raise _lost(f"cannot reach QEMU's monitor at {socket_path}", "connect", exc) from exc
        qmp = QmpSession(sock, socket_path)
        qmp._negotiate()
        yield qmp
    finally:
        sock.close()
