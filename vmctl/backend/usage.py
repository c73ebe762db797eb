"""Measuring a VM's host process with psutil: CPU time of its process tree, memory, I/O.

>>> import os
>>> from vmctl.backend.usage import process_tree_usage, usage_of_process
>>> process_tree_usage(os.getpid()).cpu_seconds > 0
True
>>> usage_of_process("m", None).cpu_seconds is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from vmctl.types import Usage

__all__ = ["ProcessUsage", "pid_alive", "process_tree_usage", "usage_of_process"]


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


def process_tree_usage(pid: int) -> ProcessUsage:
    """CPU seconds (user+system) and RSS of ``pid`` and its descendants, plus its own I/O.

    Raises ``psutil.NoSuchProcess`` if ``pid`` is gone.
    """
    root = psutil.Process(pid)
    procs = [root]
    try:
        procs += root.children(recursive=True)
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
) -> Usage:
    """:class:`~vmctl.types.Usage` of the machine whose host process is ``pid``.

    CPU time and memory of its process tree; disk I/O as given (a hypervisor's own block
    statistics), else the process's own I/O counters. All None when there is no process (``pid``
    None, or gone meanwhile).
    """
    if not pid:
        return Usage(machine=machine)
    try:
        measured = process_tree_usage(pid)
    except psutil.NoSuchProcess:
        return Usage(machine=machine)
    return Usage(
        machine=machine,
        cpu_seconds=measured.cpu_seconds,
        memory_bytes=measured.memory_bytes,
        disk_read_bytes=measured.read_bytes if disk_read_bytes is None else disk_read_bytes,
        disk_write_bytes=measured.write_bytes if disk_write_bytes is None else disk_write_bytes,
    )
