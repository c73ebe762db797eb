"""Reading the end of a hypervisor's log file: bounded, not through a link, never raising."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["log_tail"]


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` bytes of the regular file ``path`` as text ("" where it is missing,
    unreadable, a link or not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        f.seek(max(0, st.st_size - max(0, max_bytes)))
        return f.read(max(0, max_bytes)).decode("utf-8", errors="replace")
