"""The task's disk bound: the VM's files may not grow past ``rsc_disk_bound``.

The BOINC client measures a task's slot directory and aborts a task past its bound, but only
what lies in the slot. The adapter measures what the VM uses itself, every
:data:`CHECK_INTERVAL` seconds: every file under the slot (the overlay and saved state of a QEMU
machine kept in the slot, the shared directory the guest writes, the console log) and the VM's
state directory where it lies outside the slot. Past the bound the task ends as the client
would end it: exit status 196, ``EXIT_DISK_LIMIT_EXCEEDED``.

What the adapter cannot see is not counted: the disks of libvirt storage pools, VirtualBox and
VMware machine folders outside the state directory (see docs/boinc.md, "Security model").
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vmctl.boinc._outcome import Fatal

__all__ = ["CHECK_INTERVAL", "EXIT_DISK_LIMIT_EXCEEDED", "DiskBound", "disk_usage", "vm_file_roots"]

log = logging.getLogger("vmctl.boinc")

EXIT_DISK_LIMIT_EXCEEDED = 196
CHECK_INTERVAL = 10.0
MAX_ENTRIES = 200_000
"""A tree with more entries than this (a guest making millions of empty files) is over bound."""


def vm_file_roots(slot: Path, backend_options: Mapping[str, Any]) -> list[Path]:
    """The slot, and the backend's state directory where it lies outside the slot."""
    roots = [slot]
    state_dir = backend_options.get("state_dir")
    if isinstance(state_dir, (str, os.PathLike)):
        path = Path(state_dir)
        if not path.resolve().is_relative_to(slot.resolve()):
            roots.append(path)
    return roots


def disk_usage(roots: Iterable[Path], max_entries: int = MAX_ENTRIES) -> int | None:
    """Bytes the files under ``roots`` occupy on disk (allocated blocks, so a sparse image counts
    what it uses), never following a link, each inode once; None past ``max_entries`` entries."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(root) for root in roots]
    entries = 0
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    entries += 1
                    if entries > max_entries:
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


class DiskBound:
    """Checks the VM's files against ``bound`` bytes (0: no bound) every ``interval`` seconds."""

    def __init__(self, roots: Iterable[Path], bound: float, now: float, interval: float = CHECK_INTERVAL) -> None:
        self.roots = list(roots)
        self.bound = bound
        self.interval = interval
        self._next = now

    def check(self, now: float) -> None:
        if self.bound <= 0 or now < self._next:
            return
        self._next = now + self.interval
        used = disk_usage(self.roots)
        if used is None:
            raise Fatal(
                f"the VM's files hold more than {MAX_ENTRIES} entries: disk limit exceeded",
                EXIT_DISK_LIMIT_EXCEEDED,
            )
        if used > self.bound:
            raise Fatal(
                f"the VM's files use {used / 1e6:.1f} MB, more than the task's disk bound "
                f"(rsc_disk_bound) of {self.bound / 1e6:.1f} MB: disk limit exceeded",
                EXIT_DISK_LIMIT_EXCEEDED,
            )
