"""A short-lived, synchronous QMP session over qemu.qmp.

QEMU's QMP socket serves one client at a time, and vmctl machines are controlled from several
processes, so every operation opens its own session and closes it at once. Sessions run on
vmctl's private event loop (vmctl.backend.aio), which keeps the API synchronous even inside Jupyter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from vmctl.backend.aio import run_sync
from vmctl.errors import BackendError, ErrorCode, OperationTimeout

log = logging.getLogger("vmctl.qemu.qmp")
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # its own logs duplicate our errors

_UNIX_PATH_MAX = 100

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


class QmpSession:
    """One connected QMP session (use :func:`session`)."""

    def __init__(self, client: QMPClient, socket_path: Path) -> None:
        self._client = client
        self.socket_path = socket_path

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 30) -> Any:
        """Run one QMP command; raise BackendError with QEMU's error text on failure."""
        try:
            return run_sync(self._client.execute(command, arguments), timeout, f"QMP {command}")
        except ExecuteError as exc:
            raise BackendError(
                f"QEMU refused {command}: {exc.error.error.desc}",
                command=command,
                code=qmp_code(exc.error.error.class_),
                native=exc.error.error.class_,
            ) from exc
        except (QMPError, OSError, EOFError, AssertionError) as exc:
            # qemu.qmp asserts its runstate when the peer vanished mid-command
            raise MonitorLost(
                f"QMP {command} failed: {exc or type(exc).__name__}",
                command=command,
                code=ErrorCode.CONNECTION,
                native=type(exc).__name__,
            ) from exc

    def send_fd(self, fd: int, name: str, timeout: float = 10) -> None:
        """Pass an open file descriptor to QEMU under ``name`` (QMP getfd)."""

        async def send() -> None:
            self._client.send_fd_scm(fd)
            await self._client.execute("getfd", {"fdname": name})

        try:
            run_sync(send(), timeout, "QMP getfd")
        except ExecuteError as exc:
            raise BackendError(
                f"passing a file descriptor to QEMU failed: {exc}",
                command="getfd",
                code=qmp_code(exc.error.error.class_),
                native=exc.error.error.class_,
            ) from exc
        except (QMPError, OSError, EOFError, AssertionError) as exc:
            raise MonitorLost(
                f"passing a file descriptor to QEMU failed: {exc or type(exc).__name__}",
                command="getfd",
                code=ErrorCode.CONNECTION,
                native=type(exc).__name__,
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
def session(socket_path: Path, timeout: float = 10) -> Iterator[QmpSession]:
    """Connect to QEMU's QMP socket, negotiate, yield a session, disconnect."""
    client = QMPClient("vmctl")
    with _reachable(socket_path) as address:
        try:
            run_sync(client.connect(address), timeout, "QMP connect")
        except (QMPError, OSError, EOFError, AssertionError) as exc:  # AssertionError: QEMU left mid-handshake
            raise MonitorLost(
                f"cannot reach QEMU's monitor at {socket_path}: {exc or type(exc).__name__}",
                command="connect",
                code=ErrorCode.CONNECTION,
                native=type(exc).__name__,
            ) from exc
    try:
        yield QmpSession(client, socket_path)
    finally:
        with contextlib.suppress(Exception):
            run_sync(_disconnect(client), 5, "QMP disconnect")


async def _disconnect(client: QMPClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 5)
