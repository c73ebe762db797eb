"""Reading a PNG's pixels back, for tests that check what a screenshot shows (8-bit, not
interlaced: what hypervisors write). Not part of vmctl's API: the library returns PNG bytes.

>>> from vmctl.screenshot import encode_png
>>> colours(encode_png(2, 2, bytes([0, 0, 0, 255, 255, 255, 0, 0, 0, 0, 0, 0])))
2
"""

from __future__ import annotations

import struct
import zlib

from vmctl.screenshot import PNG_SIGNATURE

__all__ = ["colours", "pixel_rows"]

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def pixel_rows(png: bytes) -> list[bytes]:
    """The PNG's rows of raw samples (filters undone)."""
    assert png.startswith(PNG_SIGNATURE), "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in _CHANNELS and interlace == 0, f"unhandled PNG form {header!r}"
    bpp = _CHANNELS[colour_type]
    stride = width * bpp
    raw = zlib.decompress(idat)
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prior[i]
            upleft = prior[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, upleft)) & 0xFF
        rows.append(bytes(line))
        prior = line
    return rows


def colours(png: bytes, limit: int = 16) -> int:
    """How many distinct pixel values the PNG has (counting stops at ``limit``)."""
    header = png[16:26]
    bpp = _CHANNELS.get(header[9], 3)
    seen: set[bytes] = set()
    for row in pixel_rows(png):
        for i in range(0, len(row), bpp):
            seen.add(row[i : i + bpp])
            if len(seen) >= limit:
                return limit
    return len(seen)
