"""A directory of machine records that several processes share safely.

Backends without a daemon of their own (QEMU, vmrun) keep one directory per machine under a
``state_dir``: a JSON record written atomically (temp file, fsync, rename) and an ``fcntl``
lock file that serialises verbs across processes. Creation is atomic too: a machine directory is
assembled under a temporary name and renamed into place, so a crash never leaves half a machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmctl.errors import BackendUnavailable, MachineExists, MachineNotFound, VmctlError
from vmctl.types import validate_name

from .locking import file_lock, flock_exclusive

__all__ = ["LOCK", "RECORD", "MachineStore", "atomic_write", "default_state_dir", "flock_exclusive"]

RECORD = "machine.json"
LOCK = ".lock"


def default_state_dir(backend: str) -> Path:
    """``$VMCTL_STATE_DIR/<backend>``, else ``$XDG_STATE_HOME/vmctl/<backend>``,
    else ``~/.local/state/vmctl/<backend>``."""
    if os.environ.get("VMCTL_STATE_DIR"):
        return Path(os.environ["VMCTL_STATE_DIR"]) / backend
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vmctl" / backend


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader or a crash sees the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_private(root: Path, backend: str) -> None:
    """Refuse a state directory that another user owns or that others may write: whoever can
    write it can rewrite the machine records (and so the commands vmctl runs)."""
    st = root.stat()
    if st.st_uid != os.geteuid():
        raise BackendUnavailable(backend, f"the state directory {root} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackendUnavailable(
            backend,
            f"the state directory {root} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):o})",
        )


class MachineStore:
    """Machine directories under ``root``: ``root/<name>/machine.json`` and friends."""

    def __init__(self, root: Path, backend: str) -> None:
        self.root = Path(root).expanduser().absolute()
        self.backend = backend
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(self.root, backend)

    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / RECORD).is_file()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / RECORD).is_file())

    def read(self, name: str) -> dict[str, Any]:
        try:
            data = (self.path(name) / RECORD).read_bytes()
        except FileNotFoundError:
            raise MachineNotFound(name, self.backend) from None
        try:
            record: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise VmctlError(f"record of machine {name!r} is corrupt: {exc}") from exc
        return record

    def write(self, name: str, record: dict[str, Any]) -> None:
        directory = self.path(name)
        if not directory.is_dir():
            raise MachineNotFound(name, self.backend)
        atomic_write(directory / RECORD, json.dumps(record, indent=1, sort_keys=True).encode())

    def update(self, name: str, **changes: Any) -> dict[str, Any]:
        record = self.read(name)
        record.update(changes)
        self.write(name, record)
        return record

    @contextlib.contextmanager
    def creating(self, name: str) -> Iterator[Path]:
        """Yield a fresh private directory; on success it becomes the machine's directory."""
        target = self.path(name)
        if target.exists():
            raise MachineExists(name, self.backend)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.creating-"))
        try:
            yield tmp
            (tmp / LOCK).touch()
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise MachineExists(name, self.backend) from None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def locked(self, name: str, timeout: float = 600) -> Iterator[Path]:
        """Hold the machine's lock (exclusive across processes and threads, re-entrant in the
        thread that holds it) while the block runs."""
        directory = self.path(name)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(directory / LOCK, f"lock on machine {name!r}", timeout))
            except FileNotFoundError:
                raise MachineNotFound(name, self.backend) from None
            if not (directory / RECORD).is_file():
                raise MachineNotFound(name, self.backend)
            yield directory

    def remove(self, name: str) -> None:
        """Delete the machine's directory: move it aside atomically, then delete it."""
        directory = self.path(name)
        grave = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.deleting-"))
        try:
            os.rename(directory, grave / "m")
        except FileNotFoundError:
            shutil.rmtree(grave, ignore_errors=True)
            raise MachineNotFound(name, self.backend) from None
        shutil.rmtree(grave, ignore_errors=True)

    def sweep(self, older_than: float = 3600) -> None:
        """Remove half-created or half-deleted directories left by crashed processes."""
        now = time.time()
        for p in self.root.iterdir():
            if p.name.startswith(".") and (".creating-" in p.name or ".deleting-" in p.name):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > older_than:
                        shutil.rmtree(p, ignore_errors=True)
