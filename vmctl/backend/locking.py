"""Cross-process locks: ``flock`` with a deadline, on a lock file or a directory.

>>> import pathlib, tempfile
>>> from vmctl.backend.locking import flocked, lock_held
>>> path = pathlib.Path(tempfile.mkdtemp()) / ".lock"
>>> with flocked(path, "the example", timeout=5):
...     lock_held(path)
True
>>> lock_held(path)
False
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vmctl.errors import OperationTimeout

__all__ = ["flock_exclusive", "flocked", "lock_held"]

POLL_INTERVAL = 0.02


def flock_exclusive(
    fd: int,
    what: str,
    timeout: float,
    *,
    poll: float = POLL_INTERVAL,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting at most ``timeout`` seconds.

    ``on_wait`` is called once, when the lock is found taken. Raises :class:`OperationTimeout`
    naming ``what`` at the deadline; any other failure of ``flock`` is raised as it is.
    """
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not waiting and on_wait is not None:
            on_wait()
        waiting = True
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperationTimeout(what, timeout) from None
        time.sleep(min(poll, left))


def _open(path: Path) -> int:
    # A directory is locked through a read-only descriptor: files inside it may be replaced
    # (an editor's or a hypervisor's rename), the directory itself is not.
    if path.is_dir():
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)


@contextlib.contextmanager
def flocked(
    path: Path,
    what: str,
    timeout: float,
    *,
    poll: float = POLL_INTERVAL,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file, created if missing, or a directory)."""
    fd = _open(path)
    try:
        flock_exclusive(fd, what, timeout, poll=poll, on_wait=on_wait)
        yield
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """True while some process (this one included) holds an exclusive lock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
