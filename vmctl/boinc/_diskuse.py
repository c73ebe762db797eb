"""The task's disk bound: the VM's files may not grow past ``rsc_disk_bound``.

The BOINC client measures a task's slot directory and aborts a task past its bound, but only
what lies in the slot. The adapter measures what the VM uses itself, every
:data:`CHECK_INTERVAL` seconds: every file under the slot (the shared directory the guest writes,
the console log) and the machine's own files wherever its backend keeps them (QEMU's machine
directory, a libvirt overlay in a storage pool, a VirtualBox or VMware machine folder), as the
backend reports them. Past the bound the task ends as the client would end it: exit status
196, ``EXIT_DISK_LIMIT_EXCEEDED``.

What no backend reports is not counted: vSphere datastores (see docs/boinc.md, "Security
model").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import vmctl
from vmctl.backend.diskuse import allocated_bytes
from vmctl.boinc._outcome import Fatal
from vmctl.types import DiskUsage

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


def disk_usage(roots: Iterable[Path], max_entries: int = MAX_ENTRIES, skip: Iterable[Path] = ()) -> int | None:
    """Bytes the files under ``roots`` occupy on disk (allocated blocks, so a sparse image counts
    what it uses), never following a link, each inode once, not entering ``skip``; None past
    ``max_entries`` entries."""
    return allocated_bytes(roots, max_entries, skip)


class DiskBound:
    """Checks the VM's files against ``bound`` bytes (0: no bound) every ``interval`` seconds.

    The files are the slot's and the machine's own, as its backend reports them
    (:meth:`vmctl.Machine.disk_usage`: wherever the backend keeps them, a libvirt storage pool or
    a VirtualBox or VMware machine folder too; the slot is walked around them, so nothing counts
    twice). Before the machine exists, or where its backend cannot tell, the ``roots`` are walked:
    the slot and the state directory outside it.
    """

    def __init__(
        self,
        roots: Iterable[Path],
        bound: float,
        now: float,
        interval: float = CHECK_INTERVAL,
        machine: Callable[[], vmctl.Machine | None] = lambda: None,
    ) -> None:
        self.roots = list(roots)
        self.bound = bound
        self.interval = interval
        self.machine = machine
        self._next = now
        self._told: set[str] = set()

    def _machine_usage(self) -> DiskUsage | None:
        vm = self.machine()
        if vm is None:
            return None
        try:
            return vm.disk_usage()
        except vmctl.Unsupported:
            return None
        except vmctl.VmctlError as exc:
            if type(exc).__name__ not in self._told:
                self._told.add(type(exc).__name__)
                log.warning("the VM's disk use is unknown (%s); counting the slot's files only", exc)
            return None

    def used(self) -> int | None:
        """Bytes the VM's files use now; None past :data:`MAX_ENTRIES` entries."""
        own = self._machine_usage()
        if own is None:
            return disk_usage(self.roots)
        walked = disk_usage(self.roots[:1], skip=[Path(p) for p in own.paths])
        return None if walked is None else walked + own.bytes

    def check(self, now: float) -> None:
        if self.bound <= 0 or now < self._next:
            return
        self._next = now + self.interval
        used = self.used()
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
