"""Bytes a tree of files occupies on disk, for :meth:`vmctl.Machine.disk_usage` and the BOINC
adapter's disk bound.

Allocated blocks, not apparent sizes (a sparse image counts what it uses), no link followed, each
inode once (a hard link is counted once).

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "f").write_bytes(b"x" * 8192)
>>> allocated_bytes([root]) >= 8192
True
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["allocated_bytes"]


def allocated_bytes(roots: Iterable[Path], max_entries: int | None = None, skip: Iterable[Path] = ()) -> int | None:
    """Bytes the files under ``roots`` occupy; None past ``max_entries`` entries. Directories
    in ``skip`` are not entered (their files are counted elsewhere)."""
    seen: set[tuple[int, int]] = set()
    for path in skip:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        seen.add((st.st_dev, st.st_ino))
    total = 0
    stack = [str(root) for root in roots]
    entries = 0
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    entries += 1
                    if max_entries is not None and entries > max_entries:
                        return None
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total
