"""Measuring a VM's host process with psutil: CPU time of its process tree, memory, I/O.

>>> import os
>>> from vmctl.backend.usage import children_map, process_tree_usage, usage_of_process
>>> process_tree_usage(os.getpid()).cpu_seconds > 0
True
>>> usage_of_process("m", None).cpu_seconds is None
True
>>> os.getpid() in children_map().get(os.getppid(), [])
True
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from vmctl.types import Usage

__all__ = [
    "ProcessUsage",
    "children_index",
    "children_map",
    "descendants",
    "pid_alive",
    "process_tree_usage",
    "usage_of_process",
]


@dataclass(frozen=True)
class ProcessUsage:
    cpu_seconds: float
    memory_bytes: int
    read_bytes: int | None
    write_bytes: int | None


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def children_map() -> dict[int, list[int]]:
    """Every process's children from ONE scan of the process table: parent pid -> child pids.

    For measuring many machines at once (``usage_all``): ``psutil.Process.children`` scans the
    whole table for every process it is asked about, so N machines would cost N scans.
    """
    found: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            found.setdefault(ppid, []).append(proc.pid)
    return found


def children_index() -> dict[int, list[int]] | None:
    """What :func:`process_tree_usage` should be given when measuring many processes: None
    where the kernel lists each thread's children (reading them costs a few small reads per
    process, whatever the number of processes), else one :func:`children_map` for them all."""
    if os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children"):
        return None
    return children_map()


def _proc_children(pid: int) -> list[int] | None:
    """``pid``'s children from the kernel's per-thread lists (``/proc/PID/task/TID/children``,
    a few small reads, no scan of the table); None where the kernel has no such lists."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return [] if os.path.isdir("/proc/self/task") else None
    except OSError:
        return None
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += [int(c) for c in f.read(1 << 16).split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # no CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            return None
    return kids


def descendants(pid: int, children: Mapping[int, list[int]] | None = None) -> list[int] | None:
    """The pids of ``pid``'s descendants, from ``children`` (a :func:`children_map`) if given,
    else from the kernel's children lists; None where neither is at hand (ask psutil)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = children.get(parent, []) if children is not None else _proc_children(parent)
        if kids is None:
            return None
        found += kids
        todo += kids
    return found


def process_tree_usage(pid: int, children: Mapping[int, list[int]] | None = None) -> ProcessUsage:
    """CPU seconds (user+system) and RSS of ``pid`` and its descendants, plus its own I/O.

    ``children``: a :func:`children_map` to find the descendants in (when measuring many
    processes); without it they come from the kernel's children lists (or a psutil scan).
    Raises ``psutil.NoSuchProcess`` if ``pid`` is gone.
    """
    root = psutil.Process(pid)
    procs = [root]
    try:
        below = descendants(pid, children)
        if below is None:
            procs += root.children(recursive=True)
        else:
            for child in below:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    procs.append(psutil.Process(child))
    except psutil.NoSuchProcess:
        pass
    cpu = 0.0
    rss = 0
    for proc in procs:
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += proc.memory_info().rss
        except psutil.NoSuchProcess:
            if proc is root:
                raise
    read = write = None
    try:
        io = root.io_counters()
        read, write = io.read_bytes, io.write_bytes
    except (psutil.AccessDenied, AttributeError, NotImplementedError):
        pass
    return ProcessUsage(cpu_seconds=cpu, memory_bytes=rss, read_bytes=read, write_bytes=write)


def usage_of_process(
    machine: str,
    pid: int | None,
    *,
    disk_read_bytes: int | None = None,
    disk_write_bytes: int | None = None,
    children: Mapping[int, list[int]] | None = None,
) -> Usage:
    """:class:`~vmctl.types.Usage` of the machine whose host process is ``pid``.

    CPU time and memory of its process tree; disk I/O as given (a hypervisor's own block
    statistics), else the process's own I/O counters; ``children`` as for
    :func:`process_tree_usage`. All None when there is no process (``pid``
    None, or gone meanwhile).
    """
    if not pid:
        return Usage(machine=machine)
    try:
        measured = process_tree_usage(pid, children)
    except psutil.NoSuchProcess:
        return Usage(machine=machine)
    return Usage(
        machine=machine,
        cpu_seconds=measured.cpu_seconds,
        memory_bytes=measured.memory_bytes,
        disk_read_bytes=measured.read_bytes if disk_read_bytes is None else disk_read_bytes,
        disk_write_bytes=measured.write_bytes if disk_write_bytes is None else disk_write_bytes,
    )
