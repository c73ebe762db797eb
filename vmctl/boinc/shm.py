"""The shared memory the BOINC client and an app talk through: eight 1024-byte message channels.

On Unix the client creates either the file ``boinc_mmap_file`` in the slot (app versions with
``api_version`` >= 6.0; ``init_data.xml`` then says ``<shm_key>-1</shm_key>``) or a System V
segment keyed by ``ftok("<slot>/init_data.xml", 1)`` (older app versions and ``--run_test_app``;
the key is written as ``<shm_key>``). Both hold the same 8192 bytes.

In each channel ``buf[0]`` says a message is pending; the text follows from ``buf[1]``,
NUL-terminated, at most 1022 bytes. A sender writes only when no message is pending, text first
and flag last; the receiver copies the text and clears the flag.

>>> import pathlib, tempfile
>>> slot = pathlib.Path(tempfile.mkdtemp())
>>> create_mmap_file(slot / MMAP_FILE)
>>> app = open_shared_memory(slot, -1)
>>> client = open_shared_memory(slot, -1)
>>> client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
True
>>> client.send(Channel.PROCESS_CONTROL_REQUEST, "<resume/>")   # one message at a time
False
>>> app.receive(Channel.PROCESS_CONTROL_REQUEST)
'<suspend/>'
>>> app.receive(Channel.PROCESS_CONTROL_REQUEST) is None
True
>>> app.close(); client.close()
>>> import shutil; shutil.rmtree(slot)
"""

from __future__ import annotations

import enum
import mmap
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from vmctl.boinc.errors import BoincError

__all__ = [
    "CHANNEL_SIZE",
    "MAX_MESSAGE",
    "MMAP_FILE",
    "SEGMENT_SIZE",
    "Channel",
    "MmapSegment",
    "Segment",
    "SharedMemory",
    "SharedMemoryError",
    "SysVSegment",
    "create_mmap_file",
    "create_sysv_segment",
    "ftok_key",
    "open_shared_memory",
    "remove_sysv_segment",
]

CHANNEL_SIZE = 1024
SEGMENT_SIZE = 8 * CHANNEL_SIZE
#: Longest message text: the channel minus the flag byte and the terminating NUL.
MAX_MESSAGE = CHANNEL_SIZE - 2
MMAP_FILE = "boinc_mmap_file"


class Channel(enum.IntEnum):
    """The channels in their order in the segment (the value times 1024 is the byte offset)."""

    PROCESS_CONTROL_REQUEST = 0  # client -> app: <suspend/> <resume/> <quit/> <abort/> ...
    PROCESS_CONTROL_REPLY = 1  # unused
    GRAPHICS_REQUEST = 2  # client -> app
    GRAPHICS_REPLY = 3  # app -> client: <web_graphics_url>, <remote_desktop_addr>
    HEARTBEAT = 4  # client -> app, once a second
    APP_STATUS = 5  # app -> client: CPU time, checkpoint CPU time, fraction done, other_pid
    TRICKLE_UP = 6  # app -> client
    TRICKLE_DOWN = 7  # client -> app

    @property
    def offset(self) -> int:
        return int(self) * CHANNEL_SIZE


class SharedMemoryError(BoincError, OSError):
    """The shared memory the client made cannot be opened (missing, wrong size, wrong key)."""


class Segment(ABC):
    """8192 bytes shared with the client."""

    @abstractmethod
    def read(self, offset: int, size: int) -> bytes: ...

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class MmapSegment(Segment):
    """The slot's ``boinc_mmap_file``, mapped shared."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise SharedMemoryError(exc.errno, f"cannot open the client's shared memory file {self.path}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < SEGMENT_SIZE:
                raise SharedMemoryError(f"{self.path} has {size} bytes, the client makes it {SEGMENT_SIZE}")
            self._map = mmap.mmap(fd, SEGMENT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def read(self, offset: int, size: int) -> bytes:
        return self._map[offset : offset + size]

    def write(self, offset: int, data: bytes) -> None:
        self._map[offset : offset + len(data)] = data

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()


def _sysv() -> Any:
    # System V shared memory through the sysv_ipc package (a small C extension on PyPI with
    # wheels for Linux): it wraps ftok/shmget/shmat/shmdt with proper error handling, where a
    # ctypes binding would have to hand-code key_t, the (void*)-1 error return and errno.
    try:
        import sysv_ipc  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise SharedMemoryError(
            "the client uses System V shared memory for this app version, which needs the Python "
            "package sysv_ipc (pip install sysv_ipc), or give the app version an api_version >= 6.0"
        ) from exc
    return sysv_ipc


def ftok_key(path: Path, proj_id: int = 1) -> int:
    """``ftok(path, proj_id)`` as the client computes it for ``<slot>/init_data.xml``."""
    return int(_sysv().ftok(str(path), proj_id, True))


class SysVSegment(Segment):
    """A System V shared memory segment, attached by key."""

    def __init__(self, key: int) -> None:
        sysv = _sysv()
        self.key = key
        try:
            self._shm = sysv.SharedMemory(key)
        except sysv.Error as exc:
            raise SharedMemoryError(f"cannot attach the client's System V shared memory (key {key}): {exc}") from exc
        if self._shm.size < SEGMENT_SIZE:
            self._shm.detach()
            raise SharedMemoryError(f"System V segment {key} has {self._shm.size} bytes, expected {SEGMENT_SIZE}")

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._shm.read(size, offset))

    def write(self, offset: int, data: bytes) -> None:
        self._shm.write(data, offset)

    def close(self) -> None:
        sysv = _sysv()
        try:
            self._shm.detach()
        except sysv.NotAttachedError:
            pass


class SharedMemory:
    """The eight channels over one segment; either end (app or client) uses the same methods."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def pending(self, channel: Channel) -> bool:
        """A message waits in ``channel`` (its flag byte is set)."""
        return self.segment.read(channel.offset, 1) != b"\0"

    def receive(self, channel: Channel) -> str | None:
        """Take the pending message from ``channel``, or None if there is none."""
        off = channel.offset
        if self.segment.read(off, 1) == b"\0":
            return None
        raw = self.segment.read(off + 1, CHANNEL_SIZE - 1)
        self.segment.write(off, b"\0")
        text = raw.split(b"\0", 1)[0]
        return text.decode("utf-8", errors="replace")

    def send(self, channel: Channel, text: str) -> bool:
        """Put ``text`` in ``channel`` unless a message is still pending there; return whether sent."""
        if self.pending(channel):
            return False
        self._put(channel, text)
        return True

    def send_overwrite(self, channel: Channel, text: str) -> None:
        """Put ``text`` in ``channel`` even if an unread message is there (replacing it)."""
        self._put(channel, text)

    def _put(self, channel: Channel, text: str) -> None:
        data = text.encode("utf-8")[:MAX_MESSAGE]
        # Text (with its NUL) before the flag, as the client does: the reader trusts the flag.
        self.segment.write(channel.offset + 1, data + b"\0")
        self.segment.write(channel.offset, b"\1")

    def close(self) -> None:
        self.segment.close()

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_shared_memory(slot: Path, shm_key: int | None) -> SharedMemory:
    """Attach the memory the client made for the app in ``slot``.

    ``shm_key`` is ``init_data.xml``'s ``<shm_key>``: -1 (or absent) means the mmap file.
    """
    if shm_key is None or shm_key == -1:
        return SharedMemory(MmapSegment(Path(slot) / MMAP_FILE))
    return SharedMemory(SysVSegment(shm_key))


# -- what the client does before it starts an app (for tests and benchmarks) -------------------


def create_mmap_file(path: Path) -> None:
    """Create ``path`` as the client does: 8192 zero bytes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o660)
    try:
        os.write(fd, b"\0" * SEGMENT_SIZE)
    finally:
        os.close(fd)


def create_sysv_segment(key: int) -> SysVSegment:
    """Create (zeroed) the System V segment ``key`` as the client does; remove it with ``remove()``."""
    sysv = _sysv()
    try:
        shm = sysv.SharedMemory(key, sysv.IPC_CREX, mode=0o660, size=SEGMENT_SIZE)
    except sysv.ExistentialError:
        sysv.remove_shared_memory(sysv.SharedMemory(key).id)
        shm = sysv.SharedMemory(key, sysv.IPC_CREX, mode=0o660, size=SEGMENT_SIZE)
    shm.write(b"\0" * SEGMENT_SIZE, 0)
    shm.detach()
    return SysVSegment(key)


def remove_sysv_segment(key: int) -> None:
    """Remove the System V segment ``key`` (what the client does when the app has exited)."""
    sysv = _sysv()
    try:
        sysv.remove_shared_memory(sysv.SharedMemory(key).id)
    except sysv.ExistentialError:
        pass
