"""The QMP command sequences that vmctl's own QEMU machines and adopted QEMUs share.

Each takes an open :class:`~._qmp.QmpSession`. A machine whose run state is followed from QEMU's
events (vmctl's own) passes a :class:`Moves` that notes each move of the run state before the
command and waits for the note to be written after it; an adopted QEMU passes :data:`UNNOTED`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vmctl.backend.tools import run_tool
from vmctl.errors import BackendError, OperationTimeout
from vmctl.types import Snapshot, State

from . import _qmp

__all__ = [
    "RUNSTATES",
    "UNNOTED",
    "Moves",
    "cont_after_reset",
    "disk_snapshots",
    "graceful_reboot",
    "load_state",
    "save_state",
    "snapshot_name",
    "snapshot_tag",
]

#: QEMU's run states as vmctl states ("shutdown" is the caller's: it depends on -no-shutdown)
RUNSTATES = {
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "suspended": State.PAUSED,
    "debug": State.PAUSED,
    "io-error": State.PAUSED,
    "watchdog": State.PAUSED,
    "prelaunch": State.PAUSED,
    "inmigrate": State.PAUSED,
    "postmigrate": State.PAUSED,
    "finish-migrate": State.PAUSED,
    "save-vm": State.PAUSED,
    "restore-vm": State.PAUSED,
    "internal-error": State.CRASHED,
    "guest-panicked": State.CRASHED,
}
# QEMU looks a snapshot tag up as a snapshot ID first ("2" finds the snapshot with ID 2, whatever
# its name), so all-digit names are stored under this prefix; "#" is never part of a vmctl name.
_NUMERIC_TAG = "vmctl#"
_MIGRATION_BANDWIDTH = 1 << 34  # bytes/s: a stopped VM's state is written as fast as the disk takes it


def snapshot_tag(name: str) -> str:
    """The tag a vmctl snapshot name is stored under in the qcow2 image."""
    return _NUMERIC_TAG + name if name.isdigit() else name


def snapshot_name(tag: str) -> str:
    return tag.removeprefix(_NUMERIC_TAG)


class Moves(Protocol):
    """How a machine notes a move of QEMU's run state (see ``_watch.announce_move``)."""

    def moving(self) -> float:
        """Before a command that moves the run state: the moment, noted for readers."""
        ...

    def moved(self, since: float, runstate: str) -> None:
        """After it: return once readers see ``runstate`` (or a later move)."""
        ...


class _Unnoted:
    def moving(self) -> float:
        return time.time()

    def moved(self, since: float, runstate: str) -> None:
        pass


#: for a QEMU whose state is asked of QEMU on every read
UNNOTED: Moves = _Unnoted()


def save_state(s: _qmp.QmpSession, fd: int, name: str, timeout: float, moves: Moves = UNNOTED) -> None:
    """Stop the guest and write its whole state to ``fd`` (a migration to a file descriptor);
    a guest that was running runs on if that fails."""
    was_running = s.execute("query-status")["status"] == "running"
    moves.moving()
    s.execute("stop")
    try:
        s.execute("migrate-set-parameters", {"max-bandwidth": _MIGRATION_BANDWIDTH})
        s.send_fd(fd, "vmctl-save")
        s.execute("migrate", {"uri": "fd:vmctl-save"})
        _wait_migration(s, name, timeout)
    except BaseException:
        if was_running:
            with contextlib.suppress(BackendError, OperationTimeout):
                since = moves.moving()
                s.execute("cont")
                moves.moved(since, "running")
        raise


def _wait_migration(s: _qmp.QmpSession, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pauses = _qmp.backoff()
    while True:
        info = s.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise BackendError(
                f"saving the state of {name!r} failed: {info.get('error-desc', status)}", command="migrate"
            )
        if time.monotonic() > deadline:
            with contextlib.suppress(BackendError):
                s.execute("migrate_cancel")
            raise OperationTimeout(f"saving the state of {name!r}", timeout)
        time.sleep(next(pauses))


def load_state(
    s: _qmp.QmpSession, saved: BinaryIO, name: str, deadline: float, timeout: float, log_tail: Callable[[], str]
) -> str:
    """Load a state :func:`save_state` wrote into a QEMU started with ``-incoming defer``; the
    run state it is left in (the guest has not run yet unless that is "running")."""
    pauses = _qmp.backoff()
    s.send_fd(saved.fileno(), "vmctl-restore")
    s.execute("migrate-incoming", {"uri": "fd:vmctl-restore"})
    while (status := str(s.execute("query-status")["status"])) == "inmigrate":
        if time.monotonic() > deadline:
            raise OperationTimeout(f"restoring {name!r}", timeout)
        time.sleep(next(pauses))
    if status not in ("paused", "running", "postmigrate"):
        raise BackendError(f"restoring {name!r} left QEMU {status}: {log_tail()}")
    return status


def cont_after_reset(s: _qmp.QmpSession, timeout: float) -> None:
    """Resume once QEMU has processed a reset (``cont`` is refused until then)."""
    deadline = time.monotonic() + timeout
    pauses = _qmp.backoff()
    while s.execute("query-status")["status"] != "running":
        try:
            s.execute("cont")
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(next(pauses))


def graceful_reboot(s: _qmp.QmpSession, deadline: float) -> bool:
    """A graceful reboot as libvirt does it: let the guest shut down in response to the power
    button, keep QEMU alive in the "shutdown" run state, then reset and continue. False if the
    guest did not shut down by ``deadline``. QEMU's shutdown action is restored either way."""
    s.execute("set-action", {"shutdown": "pause"})
    try:
        s.execute("system_powerdown")
        while s.execute("query-status")["status"] != "shutdown":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        s.execute("system_reset")
        cont_after_reset(s, 30)
        return True
    finally:
        s.execute("set-action", {"shutdown": "poweroff"})


def disk_snapshots(qemu_img: str, disk: Path, notes: dict[str, Any]) -> list[Snapshot]:
    """The snapshots in a qcow2 image, oldest first, each the parent of the next."""
    out = run_tool([qemu_img, "info", "--force-share", "--output=json", str(disk)], timeout=30)
    raw = json.loads(out.stdout).get("snapshots", [])
    raw.sort(key=lambda s: (s.get("date-sec", 0), s.get("date-nsec", 0), int(s.get("id") or 0)))
    result = []
    parent = None
    for item in raw:
        name = snapshot_name(str(item["name"]))
        created = item.get("date-sec", 0) + item.get("date-nsec", 0) / 1e9
        result.append(Snapshot(name, created, item.get("vm-state-size", 0) > 0, notes.get(name, ""), parent))
        parent = name
    return result
