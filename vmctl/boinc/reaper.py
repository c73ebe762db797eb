"""Finding and removing the VMs of tasks that no longer exist.

The client never tells an app about an abort that happens while the app is not running (BOINC
issue 5424), and a task can vanish in other ways (project reset or detach, a crash at the wrong
moment). So every adapter registers its task's VM in ``<BOINC data dir>/vmctl-boinc/vms/``, a
small JSON record (VM name, backend and connect options, slot, result name, backend state
directory, the VM's host process), and removes the record when the task ends. The reaper,
run by every adapter at start and by ``vmctl-boinc --reap``, looks at each record: if its slot
no longer holds its task (no ``init_data.xml`` there, or one naming another result), the VM is
destroyed through the backend and the record removed.

With the default QEMU setup the VM's files live in the slot, which the client empties when a
task ends, so there is rarely a VM to destroy; what may remain is a VM process whose adapter
was killed. The reaper then ends that process, identified by its pid and start time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

import vmctl
from vmctl.backend.locking import flocked
from vmctl.backend.store import atomic_write
from vmctl.backend.usage import pid_alive
from vmctl.boinc.initdata import INIT_DATA_FILE, InitDataError, parse_init_data

__all__ = ["REGISTRY_DIR", "Record", "reap", "register", "registry_dir", "task_exists", "unregister"]

log = logging.getLogger("vmctl.boinc")

REGISTRY_DIR = "vmctl-boinc"
_VMS = "vms"
#: How long a reaper waits for another one that holds the registry (destroying VMs can take a while).
LOCK_TIMEOUT = 600.0

Connect = Callable[[str, dict[str, Any]], vmctl.Hypervisor]


@dataclass
class Record:
    """One task's VM, as registered by its adapter."""

    vm: str
    backend: str
    options: dict[str, Any]
    slot_dir: str
    result_name: str
    state_dir: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    registered: float = field(default_factory=time.time)


def registry_dir(boinc_dir: Path) -> Path:
    """Where the records of the BOINC data directory ``boinc_dir`` live."""
    return Path(boinc_dir) / REGISTRY_DIR / _VMS


def _record_path(directory: Path, record: Record) -> Path:
    # One file per slot and VM: two projects could use the same result name.
    slot = Path(record.slot_dir).name
    return directory / f"{record.vm}@slot{slot}.json"


def register(directory: Path, record: Record) -> None:
    """Create or update ``record`` in the registry ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if record.pid is not None and record.pid_started is None:
        with contextlib.suppress(psutil.Error):
            record.pid_started = psutil.Process(record.pid).create_time()
    atomic_write(_record_path(directory, record), json.dumps(asdict(record), indent=1, sort_keys=True).encode())


def unregister(directory: Path, record: Record) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(directory, record).unlink()


def _records(directory: Path) -> Iterator[tuple[Path, Record | None]]:
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_bytes())
            yield path, Record(**data)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("reaper: unreadable record %s: %s", path, exc)
            yield path, None


def task_exists(record: Record) -> bool:
    """The record's task still occupies its slot.

    A slot whose ``init_data.xml`` cannot be parsed (the client rewrites it in place) counts as
    occupied: the reaper must never destroy the VM of a live task.
    """
    init = Path(record.slot_dir) / INIT_DATA_FILE
    try:
        text = init.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return parse_init_data(text).result_name == record.result_name
    except InitDataError:
        return True


@contextlib.contextmanager
def _locked(directory: Path, timeout: float) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with flocked(directory / ".lock", f"lock on the reaper's registry {directory}", timeout):
        yield


def _kill_leftover_process(record: Record) -> bool:
    if record.pid is None or record.pid_started is None:
        return False
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.pid_started) > 1.0:
            return False  # the pid was reused by another process
        log.warning("reaper: ending the leftover VM process %d of %s", record.pid, record.vm)
        proc.kill()
    except psutil.Error:
        return False
    deadline = time.monotonic() + 10
    while pid_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _default_connect(backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
    return vmctl.connect(backend, **options)


def reap(
    directory: Path,
    connect: Connect = _default_connect,
    keep: frozenset[str] = frozenset(),
    timeout: float = LOCK_TIMEOUT,
) -> list[str]:
    """Destroy the VMs of registered tasks that no longer exist; return their names.

    ``keep``: VM names never touched (the caller's own). A backend that cannot be reached now
    leaves its records for a later run. Raises :class:`vmctl.OperationTimeout` if another reaper
    holds the registry for longer than ``timeout`` seconds.
    """
    reaped: list[str] = []
    with _locked(directory, timeout):
        for path, record in _records(directory):
            if record is None or record.vm in keep or task_exists(record):
                continue
            log.info(
                "reaper: task %s (slot %s) is gone; removing its VM %s", record.result_name, record.slot_dir, record.vm
            )
            if record.state_dir is not None and not Path(record.state_dir).is_dir():
                # The backend kept the VM in the slot, which the client has emptied.
                _kill_leftover_process(record)
            else:
                try:
                    hv = connect(record.backend, dict(record.options))
                except vmctl.VmctlError as exc:
                    log.warning("reaper: cannot reach backend %s now (%s); will retry later", record.backend, exc)
                    continue
                try:
                    hv.machine(record.vm).destroy()
                except vmctl.MachineNotFound:
                    pass
                except vmctl.VmctlError as exc:
                    log.warning("reaper: cannot destroy %s now (%s); will retry later", record.vm, exc)
                    continue
                finally:
                    hv.close()
                _kill_leftover_process(record)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            reaped.append(record.vm)
    return reaped
