"""The adapter's own record in the slot, and the name of a task's VM.

``<slot>/vmctl_state.json`` says which VM state a restarted adapter continues from and with how
much CPU time: the last checkpoint snapshot, the state saved at the last quit, the running VM
process and the CPU time base it was started with. It is replaced atomically (temporary file,
fsync, rename, fsync of the directory), so a crash or power loss at any moment leaves either the
previous record or the new one, never a mix; a checkpoint snapshot is recorded only once it
exists, and older snapshots are deleted only after the new record is on disk.

>>> vm_name_for("wu_0_0")
'boinc-wu_0_0'
>>> vm_name_for("CMS job #12 (retry)")
'boinc-CMS_job__12__retry_-4fa8e067'
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vmctl.backend.store import atomic_write

__all__ = ["SNAPSHOT_PREFIX", "Checkpoint", "TaskState", "snapshot_seq", "vm_name_for"]

log = logging.getLogger("vmctl.boinc")

SNAPSHOT_PREFIX = "vmctl-ckpt-"
_FORMAT = 1


def vm_name_for(result_name: str) -> str:
    """The VM name of a task: ``boinc-<result name>``, made safe and short enough.

    Result names are unique per project; a name that had to be altered (characters outside
    ``[A-Za-z0-9._-]``, or longer than 58 characters) gets a hash of the original appended so
    that two altered names cannot meet.
    """
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", result_name) or "task"
    name = f"boinc-{clean}"
    if clean == result_name and len(name) <= 64:
        return name
    digest = hashlib.sha256(result_name.encode()).hexdigest()[:8]
    return f"boinc-{clean[: 64 - 6 - 9]}-{digest}"


def snapshot_seq(name: str) -> int | None:
    """The sequence number of a checkpoint snapshot name, or None for other snapshots."""
    if name.startswith(SNAPSHOT_PREFIX) and name[len(SNAPSHOT_PREFIX) :].isdigit():
        return int(name[len(SNAPSHOT_PREFIX) :])
    return None


@dataclass
class Checkpoint:
    """A checkpoint snapshot and the CPU time the work in it cost."""

    seq: int
    snapshot: str
    cpu_time: float
    fraction_done: float = 0.0
    taken_at: float = 0.0


@dataclass
class TaskState:
    """What the adapter keeps across runs of one task in one slot."""

    result_name: str
    vm_name: str
    backend: str
    booted: bool = False
    """The VM has been started at least once (a STOPPED VM then means the guest powered off)."""
    checkpoint: Checkpoint | None = None
    next_seq: int = 1
    saved_cpu_time: float | None = None
    """The VM's state was saved to disk (on quit) with this much CPU time of work in it."""
    process_pid: int | None = None
    process_cpu_base: float = 0.0
    """CPU time of the task before the VM process ``process_pid`` started."""
    troubles: int = 0
    """Temporary exits for hypervisor trouble in a row (the delay grows with it)."""
    shared_prepared: bool = False
    state_dir: str | None = None
    """The backend state directory the adapter chose inside the slot (removed with the VM)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TaskState | None:
        """The record in ``path``, or None if there is none or it cannot be used."""
        try:
            data = json.loads(Path(path).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable state file %s: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            log.warning("ignoring the state file %s: unknown format", path)
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            ckpt = values.get("checkpoint")
            values["checkpoint"] = Checkpoint(**ckpt) if isinstance(ckpt, dict) else None
            return cls(**values)
        except TypeError as exc:
            log.warning("ignoring the state file %s: %s", path, exc)
            return None

    def save(self, path: Path) -> None:
        """Replace ``path`` atomically with this record."""
        data = {"format": _FORMAT, **asdict(self)}
        atomic_write(Path(path), json.dumps(data, indent=1, sort_keys=True).encode())
