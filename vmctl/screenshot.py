"""What :meth:`vmctl.Machine.screenshot` returns: the guest's screen as PNG bytes.

A :class:`Screenshot` holds the PNG and its size, read from the PNG's IHDR chunk; a notebook shows
it as an image (``_repr_png_``), ``save`` writes it. The helpers here are what backends share:
checking PNG bytes, encoding RGB pixels as PNG (a few lines of :mod:`zlib`, no imaging library),
converting the PPM (P6) some hypervisors write to PNG, and reading a file a hypervisor's tool
wrote into a private directory, bounded and without following links.

>>> shot = Screenshot(encode_png(2, 1, bytes([255, 0, 0, 0, 0, 255])))
>>> shot.width, shot.height, shot.png[:8] == PNG_SIGNATURE
(2, 1, True)
>>> png_from_ppm(b"P6\\n# comment\\n2 1\\n255\\n" + bytes(6))[:8] == PNG_SIGNATURE
True
>>> Screenshot(b"GIF89a")
Traceback (most recent call last):
...
vmctl.errors.BackendError: the screenshot is not a PNG image: no PNG signature
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.errors import BackendError

__all__ = [
    "MAX_SCREENSHOT_BYTES",
    "PNG_SIGNATURE",
    "Screenshot",
    "encode_png",
    "png_from_ppm",
    "png_size",
    "private_dir",
    "read_bounded",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The largest screenshot read (a 4K screen's PPM is 25 MB; its PNG is far smaller).
MAX_SCREENSHOT_BYTES = 64 * 1024 * 1024
#: Largest width and height accepted: hypervisors' screens are at most 16384 wide.
MAX_SIDE = 16384


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; :class:`BackendError` if ``data`` is no PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise BackendError("the screenshot is not a PNG image: no PNG signature")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BackendError("the screenshot is not a PNG image: no IHDR chunk first")
    (length,) = struct.unpack(">I", data[8:12])
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    if length != 13 or zlib.crc32(data[12:29]) != crc:
        raise BackendError("the screenshot is not a PNG image: a damaged IHDR chunk")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise BackendError(f"the screenshot's size {width}x{height} is not a screen's")
    return width, height


@dataclass(frozen=True)
class Screenshot:
    """The guest's screen as PNG bytes (``png``), ``width`` x ``height`` pixels.

    In Jupyter or IPython a screenshot shows as the image itself; ``save(path)`` writes the PNG.
    """

    png: bytes = field(repr=False)
    width: int = field(init=False)
    height: int = field(init=False)

    def __post_init__(self) -> None:
        width, height = png_size(self.png)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    def __repr__(self) -> str:
        return f"<Screenshot {self.width}x{self.height} PNG, {len(self.png)} bytes>"

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG to ``path`` (replaced if it is a file) and return it as a Path."""
        target = Path(path)
        target.write_bytes(self.png)
        return target


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG (8-bit RGB, no filtering) of ``rgb``: ``height`` rows of ``width`` pixels, 3 bytes each."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"{len(rgb)} bytes are not {width}x{height} RGB pixels")
    row = width * 3
    raw = b"".join(b"\x00" + rgb[y * row : (y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def png_from_ppm(data: bytes) -> bytes:
    """Convert a binary PPM (P6, maxval 255, as QEMU's screendump writes it) to PNG."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and (data[pos : pos + 1].isspace() or data[pos : pos + 1] == b"#"):
            if data[pos : pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise BackendError("the screenshot is not a PPM image: its header ends early")
        fields.append(data[start:pos])
    pos += 1  # the single whitespace after maxval
    if fields[0] != b"P6" or not all(f.isdigit() for f in fields[1:]):
        raise BackendError("the screenshot is not a binary PPM (P6) image")
    width, height, maxval = (int(f) for f in fields[1:])
    if maxval != 255 or not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise BackendError(f"unsupported PPM: {width}x{height}, maxval {maxval}")
    pixels = data[pos : pos + width * height * 3]
    if len(pixels) != width * height * 3:
        raise BackendError("the screenshot's PPM data is truncated")
    return encode_png(width, height, pixels)


def as_png(data: bytes) -> bytes:
    """``data`` as PNG: returned as is if it is one, converted if it is a PPM (P6)."""
    if data.startswith(PNG_SIGNATURE):
        return data
    if data.startswith(b"P6"):
        return png_from_ppm(data)
    raise BackendError("the screenshot is neither a PNG nor a PPM image")


@contextlib.contextmanager
def private_dir(prefix: str = "vmctl-screen-") -> Iterator[Path]:
    """A new directory only this user can enter (mode 0700), removed afterwards: where a
    hypervisor's tool writes a screenshot for us to read."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def read_bounded(path: Path, limit: int = MAX_SCREENSHOT_BYTES) -> bytes:
    """Read the regular file ``path`` (not a link to one), at most ``limit`` bytes, else BackendError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackendError(f"the hypervisor wrote no screenshot to {path}") from None
    except OSError as exc:
        raise BackendError(f"cannot open the screenshot {path}: {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BackendError(f"the screenshot {path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BackendError(f"the screenshot {path} is larger than {limit} bytes")
    return data
