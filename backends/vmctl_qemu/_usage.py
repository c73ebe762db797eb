"""A QEMU machine's usage: its process tree (psutil) and its disks' byte counts (QMP).

A paused guest does no disk I/O, so a paused machine's block statistics stay what they were
when it paused: the first reader after the pause asks QEMU and keeps the answer in
``blockio.json``, keyed by the run and the time of the pause event the keeper holds
(:mod:`._watch`); readers until the next event of the run read it from there, without a QMP
round trip. ``usage_all`` measures every machine with one pass over their directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.backend.usage import usage_of_process
from vmctl.errors import BackendError, OperationTimeout
from vmctl.types import Usage

from . import _qmp
from ._command import STATE_SOCKET
from ._launcher import BLOCK_IO, process_of, read_json
from ._watch import held_state

if TYPE_CHECKING:
    from ._machine import QemuMachine

#: run states in which the guest's devices do no I/O (QEMU drains the disks when it stops)
_QUIET = frozenset({"paused"})


def machine_usage(vm: QemuMachine, rec: dict[str, Any], children: Mapping[int, list[int]] | None = None) -> Usage:
    """The usage of ``vm`` whose record is ``rec``; ``children`` as for
    :func:`vmctl.backend.usage.process_tree_usage`."""
    proc = process_of(vm.dir, rec) if rec.get("status") != "suspended" else None
    if proc is None:
        return Usage(machine=vm.name)
    read, write = block_io(vm.dir, rec)
    return usage_of_process(vm.name, proc.pid, disk_read_bytes=read, disk_write_bytes=write, children=children)


def machine_cpu_seconds(vm: QemuMachine, rec: dict[str, Any]) -> float | None:
    """CPU time of ``vm``'s process tree (record ``rec``), without QEMU's block statistics."""
    proc = process_of(vm.dir, rec) if rec.get("status") != "suspended" else None
    if proc is None:
        return None
    return usage_of_process(vm.name, proc.pid, disk_read_bytes=0, disk_write_bytes=0).cpu_seconds


def _quiet_key(directory: Path, rec: dict[str, Any]) -> list[Any] | None:
    """[run id, time of the event that paused it] while the keeper holds the run as paused."""
    held = held_state(directory, rec)
    if held is None or held.get("runstate") not in _QUIET:
        return None
    return [rec.get("run_id"), held.get("event_time")]


def block_io(directory: Path, rec: dict[str, Any]) -> tuple[int | None, int | None]:
    """Bytes read and written by the guest's disks: QEMU's ``query-blockstats``, or while the
    machine stays paused the answer kept since it paused; (None, None) if QEMU cannot answer."""
    key = _quiet_key(directory, rec)
    if key is not None:
        kept = read_json(directory, BLOCK_IO)
        if kept and kept.get("key") == key and isinstance(kept.get("read"), int) and isinstance(kept.get("write"), int):
            return kept["read"], kept["write"]
    try:
        with _qmp.session(directory / STATE_SOCKET, 5) as s:
            stats = s.execute("query-blockstats", timeout=5)
    except (BackendError, OperationTimeout):
        return None, None
    read = sum(int(d["stats"]["rd_bytes"]) for d in stats)
    write = sum(int(d["stats"]["wr_bytes"]) for d in stats)
    if key is not None and _quiet_key(directory, rec) == key:  # paused all along the query
        _keep(directory / BLOCK_IO, {"key": key, "read": read, "write": write})
    return read, write


def _keep(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` (a cache: no fsync; a reader finding it torn asks QEMU). Any process may
    write it, without the machine's lock; where it cannot (the machine destroyed meanwhile, a
    full disk, the next verb's settle dropping the temporary file) the next reader asks QEMU."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
