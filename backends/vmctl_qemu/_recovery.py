"""Crash recovery: finishing or undoing what a process killed in the middle of a verb left behind.

Any process may be killed at any point of a verb. The next verb therefore begins, inside the
machine's exclusive section, with :func:`settle`: it finishes an interrupted suspend whose state
was saved, drops a leftover QEMU of an interrupted suspend or restore (the saved state stays
authoritative), adopts a QEMU whose launcher died, quits a QEMU left powered down by an
interrupted graceful restart or poweroff, and deletes partial and stale files. Opening a handle
does the same when :func:`has_leftovers` sees such traces and no verb is running. Reading the
state never does any of it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from vmctl.backend.store import RECORD, atomic_write
from vmctl.errors import BackendError, OperationTimeout
from vmctl.types import State

from . import _qmp
from ._keeper import MOVING
from ._launcher import (
    BLOCK_IO,
    PARTIAL_STATE,
    SAVED_STATE,
    exit_record,
    orphan_keeper,
    process_of,
    read_json,
    still_running,
    terminate,
    wait_qmp,
)

if TYPE_CHECKING:
    from ._machine import QemuMachine

log = logging.getLogger("vmctl.qemu")

# query-migrate states of a migration that is still going on
MIGRATING = ("setup", "active", "device", "pre-switchover", "wait-unplug", "cancelling", "postcopy-active")


def has_leftovers(vm: QemuMachine, rec: dict[str, Any] | None = None) -> bool:
    """Cheap signs (no QMP) that a killed process left something for :func:`settle` to do;
    ``rec``: the machine's record as the caller has just read it."""
    directory = vm.dir
    names = os.listdir(directory)  # one look at the directory for the three names below
    if PARTIAL_STATE in names or any(fnmatch.fnmatchcase(n, f".{RECORD}.*.tmp") for n in names):
        return True
    if rec is None:
        rec = vm._record()
    status = rec.get("status")
    if rec.get("reboot_run") or (status != "suspended" and SAVED_STATE in names):
        return True
    if status == "running":
        # a live QEMU of the run is a launched one: whether it lives changes nothing here
        run = read_json(directory, "run.json")
        launched = bool(run and run.get("run_id") == rec.get("run_id"))
        return not launched and exit_record(directory, rec.get("run_id"), grace=0) is None
    return status in ("suspended", "stopped") and process_of(directory, rec) is not None


def settle(vm: QemuMachine, timeout: float = 300) -> State:
    """Under the lock: finish or undo what a killed process left, then return the machine's
    state. Cheap when there is nothing to do."""
    for junk in vm.dir.glob(f".{RECORD}.*.tmp"):  # atomic_write's temp files (written under this lock)
        junk.unlink(missing_ok=True)
    for junk in vm.dir.glob(f".{BLOCK_IO}.*.tmp"):  # of a reader killed keeping block statistics
        junk.unlink(missing_ok=True)
    rec = vm._record()
    saved, partial = vm.dir / SAVED_STATE, vm.dir / PARTIAL_STATE
    proc = process_of(vm.dir, rec)
    if proc is None and rec.get("status") == "running" and _adopt_orphan(vm, rec, timeout):
        proc = process_of(vm.dir, rec)
    if proc is None:
        partial.unlink(missing_ok=True)
        (vm.dir / MOVING).unlink(missing_ok=True)  # a verb died moving a run that is over
        if rec.get("status") != "suspended":
            saved.unlink(missing_ok=True)
        if rec.get("reboot_run"):
            rec = vm._update(reboot_run=None)
        return vm._offline_state(rec)
    if rec.get("status") in ("suspended", "stopped"):
        # the leftover QEMU of an interrupted suspend (after the save), restore (before it
        # completed) or poweroff: it has not run the guest since the state was saved, or was
        # being powered off; finish the job
        log.warning("%s: ending the QEMU left by an interrupted %s", vm.name, rec["status"])
        terminate(vm, 30)
        partial.unlink(missing_ok=True)
        if rec.get("status") == "stopped":
            saved.unlink(missing_ok=True)
        return vm._offline_state(vm._record())
    try:
        # the keeper's event-held run state, unless a state save may be half done: QEMU moves
        # to "postmigrate" without an event, and only QEMU itself can tell
        suspicious = rec.get("reboot_run") or partial.exists() or saved.exists()
        runstate = vm._query_status() if suspicious else vm._runstate_now(rec)
    except (BackendError, OperationTimeout):
        return State.UNKNOWN if still_running(proc) else vm._offline_state(vm._record())
    if runstate == "shutdown":
        # the guest powered off during a graceful restart whose process died before the reset
        log.warning("%s: guest powered off during an interrupted restart; ending QEMU", vm.name)
        vm._update(status="stopped", reboot_run=None)
        terminate(vm, 30)
        partial.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)
        return State.STOPPED
    if rec.get("reboot_run"):
        with vm._monitor() as s:
            s.execute("set-action", {"shutdown": "poweroff"})
        vm._update(reboot_run=None)
    if partial.exists() or runstate == "postmigrate":
        finished = _finish_suspend(vm, timeout)
        if finished is not None:
            return finished
    elif saved.exists():
        saved.unlink()  # a running machine's saved state is stale (an interrupted restore's)
    return vm._runstate(runstate)


def _adopt_orphan(vm: QemuMachine, rec: dict[str, Any], timeout: float) -> bool:
    """The launcher of the recorded run died before its keeper recorded QEMU: wait for the
    keeper to start QEMU (True) or to give up; record a run that never started as ended."""
    run_id = rec.get("run_id")
    run = read_json(vm.dir, "run.json")
    if (run and run.get("run_id") == run_id) or exit_record(vm.dir, run_id, grace=0):
        return False
    keeper = orphan_keeper(vm.dir, run_id)
    deadline = time.monotonic() + min(timeout, 30)
    pauses = _qmp.backoff()
    while keeper is not None and keeper.is_running() and time.monotonic() < deadline:
        run = read_json(vm.dir, "run.json")
        if run and run.get("run_id") == run_id:
            log.warning("%s: adopting the QEMU started for a launcher that died", vm.name)
            wait_qmp(vm, time.monotonic() + 10)
            return True
        time.sleep(next(pauses))
    if keeper is not None and keeper.is_running():
        keeper.kill()
    atomic_write(vm.dir / "exit.json", json.dumps({"run_id": run_id, "status": None}).encode())
    return False


def _finish_suspend(vm: QemuMachine, timeout: float) -> State | None:
    """A suspend was interrupted: finish it if QEMU saved the whole state, else discard the
    partial file. Returns SUSPENDED when finished, None when the machine stays as it is."""
    saved, partial = vm.dir / SAVED_STATE, vm.dir / PARTIAL_STATE
    deadline = time.monotonic() + timeout
    pauses = _qmp.backoff()
    with vm._monitor() as s:
        while (status := s.execute("query-migrate").get("status")) in MIGRATING:
            if time.monotonic() > deadline:
                s.execute("migrate_cancel")
                raise OperationTimeout(f"the interrupted state save of {vm.name!r}", timeout)
            time.sleep(next(pauses))
        runstate = s.execute("query-status")["status"]
    if status == "completed" and runstate == "postmigrate":
        if partial.exists():
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial, saved)
        if saved.is_file():
            log.warning("%s: finishing an interrupted suspend (its state was saved)", vm.name)
            vm._update(status="suspended")
            terminate(vm, 30)
            return State.SUSPENDED
    partial.unlink(missing_ok=True)
    saved.unlink(missing_ok=True)
    return None
