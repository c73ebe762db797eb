"""Reading files a guest wrote, and writing files a job names, without following any link.

A guest writes the shared directory: any name in it may be a symbolic link to a host file, a FIFO
that blocks its reader, or a link to ``/dev/zero`` that never ends. Every open here is relative to
a descriptor of the directory and resolves no link at all: ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6), else one component at a time with
``O_NOFOLLOW``. The file is first opened ``O_PATH`` (no device or FIFO is ever opened for
reading), must be a regular file, and is read to a bound.

>>> import pathlib, tempfile, os
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "progress").write_text("0.25\\n")
>>> read_bounded(d, "progress", 4096)
b'0.25\\n'
>>> os.symlink("/etc/passwd", d / "link")
>>> read_bounded(d, "link", 4096)
Traceback (most recent call last):
...
vmctl.boinc._safefs.UnsafeFile: link: a symbolic link (not followed)
>>> import shutil; shutil.rmtree(d)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "UnsafeFile",
    "copy_bounded",
    "open_beneath",
    "read_bounded",
    "read_tail",
    "stat_beneath",
    "unlink_beneath",
    "write_exclusive",
]

_SYS_OPENAT2 = 437  # the same number on every architecture's generic syscall table
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_CHUNK = 1 << 20


class UnsafeFile(OSError):
    """A guest-writable name that is not a plain regular file beneath its directory (a link, a
    FIFO, a device, a directory, a name leaving the directory), or a file over its size bound."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_have_openat2: bool | None = None


def _openat2(dir_fd: int, name: str, flags: int) -> int | None:
    """``openat2`` with no link resolution, or None where the kernel (or a seccomp filter) lacks it."""
    global _libc, _have_openat2
    if _have_openat2 is False:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(name), ctypes.byref(how), ctypes.sizeof(how)))
    if fd >= 0:
        _have_openat2 = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and not _have_openat2:
        _have_openat2 = False
        return None
    raise OSError(err, os.strerror(err), name)


def _parts(name: str) -> list[str]:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise UnsafeFile(errno.EXDEV, "not a plain relative name inside the directory", name)
    return parts


def _open_by_components(dir_fd: int, parts: list[str], flags: int) -> int:
    fd = dir_fd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(errno.ELOOP, "a symbolic link on the way", part) from None
                raise
            if fd != dir_fd:
                os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        if fd != dir_fd:
            os.close(fd)


def open_beneath(dir_fd: int, name: str, flags: int, *, use_openat2: bool = True) -> int:
    """Open ``name`` (``a`` or ``a/b``) relative to ``dir_fd`` following no link; a link anywhere
    on the way is ``ELOOP`` (or, for the last component with ``O_PATH``, a descriptor of the link)."""
    parts = _parts(name)
    flags |= os.O_CLOEXEC if flags & _O_PATH else os.O_CLOEXEC | os.O_NOCTTY  # openat2: O_PATH takes no more
    if use_openat2:
        fd = _openat2(dir_fd, name, flags)
        if fd is not None:
            return fd
    return _open_by_components(dir_fd, parts, flags)


@contextlib.contextmanager
def _directory(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _why(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed)"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


#: Where QEMU's 9p ``mapped-xattr`` model keeps the mode the guest gave a file (a little-endian
#: 32-bit ``mode_t``): a guest's symlink, FIFO or device node is a regular file on the host.
GUEST_MODE_XATTR = "user.virtfs.mode"


def _guest_mode(fd: int) -> int | None:
    """The file type and mode the guest recorded for ``fd`` through a mapped 9p share, if any."""
    try:
        raw = os.getxattr(f"/proc/self/fd/{fd}", GUEST_MODE_XATTR)
    except OSError:
        return None
    return int.from_bytes(raw[:4], "little") if len(raw) >= 4 else None


#: Where QEMU's 9p ``mapped-file`` model keeps it instead: ``virtfs.mode=N`` in a file of this
#: directory, next to the file, named as the file (the guest cannot see or write it).
GUEST_METADATA_DIR = ".virtfs_metadata"


def _guest_mode_file(dir_fd: int, name: str) -> int | None:
    *parents, last = name.split("/")
    try:
        fd = open_beneath(dir_fd, "/".join([*parents, GUEST_METADATA_DIR, last]), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 4096).decode("ascii", "replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "virtfs.mode" and value.strip().isdigit():
            return int(value.strip())
    return None


def _checked(fd: int, name: str, dir_fd: int | None = None) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(errno.EINVAL, _why(st.st_mode), name)
    mode = _guest_mode(fd)
    if mode is None and dir_fd is not None:
        mode = _guest_mode_file(dir_fd, name)
    if mode is not None and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise UnsafeFile(errno.EINVAL, _why(mode) + " made by the guest", name)
    return st


def _probe(dir_fd: int, name: str, use_openat2: bool) -> int:
    """An ``O_PATH`` descriptor of ``name`` (of the link itself if it is one): nothing is opened
    for reading, so a FIFO or a device has no effect."""
    try:
        return open_beneath(dir_fd, name, _O_PATH | os.O_NOFOLLOW, use_openat2=use_openat2)
    except UnsafeFile:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "a symbolic link on the way (not followed)", name) from None
        if exc.errno == errno.EXDEV:
            raise UnsafeFile(errno.EXDEV, "not a plain relative name inside the directory", name) from None
        raise


@contextlib.contextmanager
def _open_regular(root: Path, name: str, *, use_openat2: bool = True) -> Iterator[tuple[int, os.stat_result]]:
    """A read descriptor of the regular file ``root/name``, and its status."""
    with _directory(root) as dir_fd:
        probe = _probe(dir_fd, name, use_openat2)
        try:
            first = _checked(probe, name, dir_fd)
        finally:
            os.close(probe)
        fd = open_beneath(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, use_openat2=use_openat2)
        try:
            st = _checked(fd, name, dir_fd)
            if (st.st_dev, st.st_ino) != (first.st_dev, first.st_ino):
                raise UnsafeFile(errno.EAGAIN, "replaced while being opened", name)
            yield fd, st
        finally:
            os.close(fd)


def stat_beneath(root: Path, name: str, *, use_openat2: bool = True) -> os.stat_result:
    """The status of the regular file ``root/name`` (no link followed; a link, FIFO or device is
    :class:`UnsafeFile`; a missing file ``FileNotFoundError``)."""
    with _directory(root) as dir_fd:
        fd = _probe(dir_fd, name, use_openat2)
        try:
            return _checked(fd, name, dir_fd)
        finally:
            os.close(fd)


def unlink_beneath(root: Path, name: str, *, use_openat2: bool = True) -> None:
    """Remove ``root/name`` (whatever it is but a directory) without following a link on the way."""
    parts = _parts(name)
    with _directory(root) as dir_fd:
        parent = dir_fd
        if len(parts) > 1:
            parent = open_beneath(dir_fd, "/".join(parts[:-1]), os.O_RDONLY | os.O_DIRECTORY, use_openat2=use_openat2)
        try:
            os.unlink(parts[-1], dir_fd=parent)
        finally:
            if parent != dir_fd:
                os.close(parent)


def read_bounded(root: Path, name: str, limit: int, *, use_openat2: bool = True) -> bytes:
    """The first ``limit`` bytes of the regular file ``root/name``."""
    with _open_regular(root, name, use_openat2=use_openat2) as (fd, _):
        return _read(fd, limit)


def read_tail(root: Path, name: str, size: int, *, use_openat2: bool = True) -> bytes:
    """The last ``size`` bytes of the regular file ``root/name``."""
    with _open_regular(root, name, use_openat2=use_openat2) as (fd, st):
        os.lseek(fd, max(0, st.st_size - size), os.SEEK_SET)
        return _read(fd, size)


def _read(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        try:
            data = os.read(fd, min(left, _CHUNK))
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def write_exclusive(target: Path, fill: Iterator[bytes] | bytes, mode: int = 0o644) -> int:
    """Replace ``target`` by a new file: written to a fresh ``O_EXCL|O_NOFOLLOW`` temporary file
    beside it, then renamed over it (a link at ``target`` is replaced, never followed). Returns
    the number of bytes written."""
    tmp = target.with_name(f".{target.name}.vmctl-{os.getpid()}-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for data in [fill] if isinstance(fill, bytes) else fill:
                out.write(data)
                written += len(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return written


def copy_bounded(root: Path, name: str, target: Path, limit: int, *, use_openat2: bool = True) -> int:
    """Copy the regular file ``root/name`` (read through the descriptor that was checked) to
    ``target`` via :func:`write_exclusive`; a file over ``limit`` bytes is :class:`UnsafeFile`
    and leaves ``target`` as it was."""
    with _open_regular(root, name, use_openat2=use_openat2) as (fd, st):
        if st.st_size > limit:
            raise UnsafeFile(errno.EFBIG, f"{st.st_size} bytes, over the bound of {limit}", name)

        def chunks() -> Iterator[bytes]:
            left = limit + 1
            while True:
                data = os.read(fd, min(_CHUNK, left))
                if not data:
                    return
                left -= len(data)
                if left <= 0:
                    raise UnsafeFile(errno.EFBIG, f"grew over the bound of {limit} bytes", name)
                yield data

        return write_exclusive(target, chunks())
