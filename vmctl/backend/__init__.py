"""The kit for backend authors: what every backend shares and users never import.

One module per concern:

- :mod:`~vmctl.backend.store`: machine directories with an atomic JSON record and a
  cross-process lock, for hypervisors without a registry of their own (QEMU, vmrun).
- :mod:`~vmctl.backend.locking`: ``flock`` with a deadline, on a lock file or a directory.
- :mod:`~vmctl.backend.tools`: running a command-line tool (argv list, C locale, deadline,
  :class:`~vmctl.errors.BackendError` on failure), also in the background.
- :mod:`~vmctl.backend.usage`: a host process tree measured into a :class:`~vmctl.types.Usage`.
- :mod:`~vmctl.backend.ports`: a free loopback port.
- :mod:`~vmctl.backend.diskuse`: the bytes a tree of files occupies (``Machine.disk_usage``).
- :mod:`~vmctl.backend.logs`: the end of a hypervisor's log file, bounded, not through a link.
- :mod:`~vmctl.backend.aio`: vmctl's private event loop for asyncio-only clients.
- :mod:`~vmctl.backend.records`: a machine's recorded spec and paths read back, re-validated.

>>> from vmctl.backend import free_port, spec_from_record
>>> spec_from_record({"name": "m", "kernel": "/moved/vmlinuz"}).kernel
PosixPath('/moved/vmlinuz')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmctl.backend.aio import LoopThreadError, run_sync
    from vmctl.backend.diskuse import allocated_bytes
    from vmctl.backend.locking import file_lock, flock_exclusive, flocked, lock_held, machine_lock
    from vmctl.backend.ports import free_port
    from vmctl.backend.records import inside, spec_from_record
    from vmctl.backend.store import MachineStore, atomic_write, default_state_dir
    from vmctl.backend.tools import Background, c_locale_env, run_tool
    from vmctl.backend.usage import pid_alive, process_tree_usage, usage_of_process

#: name -> module: a backend importing one piece does not pay for the others (asyncio, psutil).
_WHERE = {
    "Background": "tools",
    "LoopThreadError": "aio",
    "MachineStore": "store",
    "allocated_bytes": "diskuse",
    "atomic_write": "store",
    "c_locale_env": "tools",
    "default_state_dir": "store",
    "file_lock": "locking",
    "flock_exclusive": "locking",
    "flocked": "locking",
    "free_port": "ports",
    "inside": "records",
    "lock_held": "locking",
    "machine_lock": "locking",
    "pid_alive": "usage",
    "process_tree_usage": "usage",
    "run_sync": "aio",
    "run_tool": "tools",
    "spec_from_record": "records",
    "usage_of_process": "usage",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Background",
    "LoopThreadError",
    "MachineStore",
    "allocated_bytes",
    "atomic_write",
    "c_locale_env",
    "default_state_dir",
    "file_lock",
    "flock_exclusive",
    "flocked",
    "free_port",
    "inside",
    "lock_held",
    "machine_lock",
    "pid_alive",
    "process_tree_usage",
    "run_sync",
    "run_tool",
    "spec_from_record",
    "usage_of_process",
]
