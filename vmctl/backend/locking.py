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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vmctl.errors import MachineNotFound, OperationTimeout
from vmctl.types import validate_name

__all__ = ["file_lock", "flock_exclusive", "flocked", "lock_held", "machine_lock"]

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


_held = threading.local()


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while the block runs.

    Excludes other processes and other threads of this one (each takes its own open file); the
    thread that holds it may enter again without waiting. Raises :class:`OperationTimeout` at the
    deadline and ``FileNotFoundError`` if the directory is gone. A lock file that was replaced or
    removed while this caller waited is not trusted: the caller locks the new one instead.
    """
    key = os.path.abspath(path)
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            flock_exclusive(fd, what, max(0.0, deadline - time.monotonic()))
            try:
                same = os.stat(key).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        os.close(fd)


@contextlib.contextmanager
def machine_lock(directory: Path, name: str, verb: str, timeout: float, optional: bool = False) -> Iterator[None]:
    """A machine's lock as ``directory/<name>.lock``, for backends whose machines live elsewhere
    (a hypervisor's registry): held while one verb runs, removed with the machine (after a
    ``destroy``, or when a waiter finds the machine gone), and the directory with the last one.
    ``optional``: where the directory cannot be written, run without the lock."""
    path = directory / f"{validate_name(name)}.lock"
    with contextlib.ExitStack() as stack:
        for attempt in range(10):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                stack.enter_context(file_lock(path, f"lock on machine {name!r}", timeout))
                break
            except (FileNotFoundError, FileExistsError):  # the directory went with another machine's last lock
                if attempt == 9:
                    raise
            except PermissionError:
                if not optional:
                    raise
                break
        try:
            yield
        except MachineNotFound:
            _remove_lock(path)
            raise
        if verb == "destroy":
            _remove_lock(path)


def _remove_lock(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
        path.parent.rmdir()  # only if no other machine's lock is in it
