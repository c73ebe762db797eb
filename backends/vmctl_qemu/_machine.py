"""One QEMU machine: a directory with its record, overlay, sockets, logs and saved state.

Files in the machine's directory:

- ``machine.json``: the record (spec, intended status, current run id, snapshot notes)
- ``disk.qcow2``: the copy-on-write overlay over the base image (snapshots live inside it)
- ``qmp.sock`` / ``state.sock``: QMP monitors for commands (under the lock) and for queries
- ``run.json`` / ``exit.json``: written by the keeper: QEMU's pid, then its exit status
- ``state.bin``: the saved machine state while SUSPENDED (``state.bin.tmp`` while it is written)
- ``qemu.log``: QEMU's stderr, kept after a crash; ``console.log``: the serial console
  when the spec names no ``serial_log``

The verbs run inside the machine's exclusive section (``.lock``, an ``flock`` any process
respects), which begins by settling what a killed process left behind (:mod:`._recovery`).
Reading the state changes nothing: while another process holds the lock it reports the state
that process is moving from or through (never a false CRASHED), and a leftover reads as what the
record says the machine is (a poweroff that was recorded is STOPPED) until a verb settles it.
Processes are started and ended by :mod:`._launcher`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import psutil

from vmctl.backend.locking import lock_held
from vmctl.backend.records import inside, spec_from_record
from vmctl.backend.store import LOCK
from vmctl.backend.tools import run_tool
from vmctl.backend.usage import usage_of_process
from vmctl.errors import BackendError, OperationTimeout, Unsupported, VmctlError, os_error_code
from vmctl.interface import Machine
from vmctl.types import Capabilities, MachineSpec, Snapshot, State, Usage

from . import _qmp
from ._command import DISK_NODE, NIC_NETDEV, QMP_SOCKET, STATE_SOCKET
from ._launcher import (
    KEEPER_SCRIPT,
    PARTIAL_STATE,
    SAVED_STATE,
    discard_run_files,
    exit_record,
    launch,
    orphan_keeper,
    process_of,
    read_json,
    still_running,
    terminate,
)
from ._recovery import has_leftovers, settle

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

__all__ = ["KEEPER_SCRIPT", "QemuMachine", "snapshot_name", "snapshot_tag"]

log = logging.getLogger("vmctl.qemu")

_RUNSTATES = {
    "running": State.RUNNING,
    "shutdown": State.RUNNING,  # only between power-off and reset during a graceful restart
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
_NO_SNAPSHOTS = "the machine has no qcow2 disk (create it with overlay=True)"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _typed_os_errors(method: Callable[Concatenate[QemuMachine, _P], _R]) -> Callable[Concatenate[QemuMachine, _P], _R]:
    """Report a failing file operation (a full disk, a permission) as BackendError, not OSError."""

    def wrapper(self: QemuMachine, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except VmctlError:  # OperationTimeout is an OSError (TimeoutError) too
            raise
        except OSError as exc:
            raise _os_error(self.name, method.__name__.lstrip("_").removeprefix("do_"), exc) from exc

    return functools.update_wrapper(wrapper, method)


def _os_error(machine: str, what: str, exc: OSError) -> BackendError:
    path = str(exc.filename) if exc.filename is not None else None
    return BackendError(f"{machine}: {what} failed: {exc}", command=path, code=os_error_code(exc))


def snapshot_tag(name: str) -> str:
    """The qcow2 tag under which snapshot ``name`` is stored."""
    return _NUMERIC_TAG + name if name.isdigit() else name


def snapshot_name(tag: str) -> str:
    return tag.removeprefix(_NUMERIC_TAG)


class QemuMachine(Machine):
    hypervisor: QemuHypervisor

    def __init__(self, hypervisor: QemuHypervisor, name: str) -> None:
        super().__init__(hypervisor, name)
        self.dir = hypervisor.store.path(name)
        self._spec: MachineSpec | None = None

    # -- records and the lock ----------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return self.hypervisor.store.read(self.name)

    def _update(self, **changes: Any) -> dict[str, Any]:
        return self.hypervisor.store.update(self.name, **changes)

    @contextlib.contextmanager
    def _locked(self, timeout: float = 600) -> Iterator[None]:
        with self.hypervisor.store.locked(self.name, timeout):
            yield

    @contextlib.contextmanager
    def _exclusive(self, verb: str, timeout: float) -> Iterator[None]:
        """The machine's store lock, then :func:`._recovery.settle` (except for destroy, which
        ends whatever is there)."""
        try:
            with self._locked(timeout):
                if verb != "destroy":
                    settle(self, timeout)
                yield
        except VmctlError:
            raise
        except OSError as exc:
            raise _os_error(self.name, verb, exc) from exc

    def _recover_if_idle(self) -> None:
        """When a handle is opened: settle what a killed process left, unless a verb is running
        (it settles them itself). Failures are left for the next verb to report."""
        try:
            if has_leftovers(self):
                with self._locked(timeout=0):
                    settle(self, 60)
        except (VmctlError, OSError) as exc:
            log.debug("%s: leftovers not settled on open (%s)", self.name, exc)

    def _lock_busy(self) -> bool:
        """True while some process (this one included) holds the machine's lock."""
        return lock_held(self.dir / LOCK)

    @property
    def spec(self) -> MachineSpec:
        if self._spec is None:
            self._spec = spec_from_record(self._record()["spec"])
        return self._spec

    @property
    def capabilities(self) -> Capabilities:
        caps = self.hypervisor.capabilities
        if self._why("snapshots"):
            return caps.without("snapshots", "live_snapshots")
        return caps

    def _why(self, capability: str) -> str:
        if capability in ("snapshots", "live_snapshots"):
            rec = self._record()
            if rec.get("disk") is None or rec.get("disk_format") != "qcow2":
                return _NO_SNAPSHOTS
        return ""

    @property
    def serial_log(self) -> Path:
        """Where the guest's serial console goes."""
        return self.spec.serial_log or self.dir / "console.log"

    def hypervisor_log(self, max_bytes: int = 4000) -> str:
        """The end of QEMU's own stderr (kept after a crash)."""
        try:
            with open(self.dir / "qemu.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _disk(self, rec: dict[str, Any]) -> Path | None:
        disk = rec.get("disk")
        if disk is None:
            return None
        # the record may have been edited: its disk is the machine's own overlay or the base
        # image the spec declares (overlay=False), nothing else
        if self.spec.disk is not None and not self.spec.overlay and disk == str(self.spec.disk):
            return self.spec.disk
        return inside(self.dir, disk, "disk")

    # -- reading the state (never changes anything) ------------------------------------------
    def _process(self, rec: dict[str, Any]) -> psutil.Process | None:
        """The live QEMU process of the recorded run, or None."""
        return process_of(self.dir, rec)

    def _query_status(self, timeout: float = 5) -> str:
        with _qmp.session(self.dir / STATE_SOCKET, timeout) as s:
            status: str = s.execute("query-status", timeout=timeout)["status"]
            return status

    @staticmethod
    def _runstate(runstate: str) -> State:
        return _RUNSTATES.get(runstate, State.UNKNOWN)

    def _get_state(self) -> State:
        rec = self._record()
        proc = self._process(rec)
        if proc is None or rec.get("status") == "suspended":
            # a restore in progress, or the QEMU of an interrupted suspend or restore: the saved
            # state is what counts
            return self._offline_state(rec)
        if rec.get("status") == "stopped" and not self._lock_busy():
            return State.STOPPED  # the QEMU of an interrupted poweroff: the next verb ends it
        try:
            runstate = self._query_status()
        except (BackendError, OperationTimeout):
            if still_running(proc):
                return State.UNKNOWN
            return self._offline_state(self._record())
        if runstate == "shutdown" and not self._lock_busy():
            return State.STOPPED  # the guest powered off during an interrupted graceful restart
        return self._runstate(runstate)

    def _offline_state(self, rec: dict[str, Any]) -> State:
        status = rec.get("status")
        if status == "stopped":
            return State.STOPPED
        if status == "suspended":
            return State.SUSPENDED if (self.dir / SAVED_STATE).is_file() else State.CRASHED
        run_id = rec.get("run_id")
        ended = exit_record(self.dir, run_id)
        if ended:
            return State.STOPPED if ended.get("status") == 0 else State.CRASHED  # 0: the guest powered off
        run = read_json(self.dir, "run.json")
        if not (run and run.get("run_id") == run_id) and (self._lock_busy() or orphan_keeper(self.dir, run_id)):
            return State.UNKNOWN  # being launched: its keeper has not started QEMU yet
        return State.CRASHED

    def _get_pid(self) -> int | None:
        rec = self._record()
        if rec.get("status") == "suspended" or (rec.get("status") == "stopped" and not self._lock_busy()):
            return None  # a restore in progress, or a leftover that the next verb ends
        proc = self._process(rec)
        return proc.pid if proc is not None else None

    def _monitor(self, timeout: float = 10) -> contextlib.AbstractContextManager[_qmp.QmpSession]:
        return _qmp.session(self.dir / QMP_SOCKET, timeout)

    # -- verbs -------------------------------------------------------------------------------
    @_typed_os_errors
    def _do_start(self, timeout: float) -> None:
        rec = self._record()
        if rec.get("status") == "suspended" and (self.dir / SAVED_STATE).is_file():
            launch(self, rec, timeout, incoming=True)
            self._restore(timeout)
        else:
            launch(self, rec, timeout)

    def _restore(self, timeout: float) -> None:
        saved = self.dir / SAVED_STATE
        deadline = time.monotonic() + timeout
        pauses = _qmp.backoff()
        try:
            with open(saved, "rb") as f, self._monitor() as s:
                s.send_fd(f.fileno(), "vmctl-restore")
                s.execute("migrate-incoming", {"uri": "fd:vmctl-restore"})
                while (status := s.execute("query-status")["status"]) == "inmigrate":
                    if time.monotonic() > deadline:
                        raise OperationTimeout(f"restoring {self.name!r}", timeout)
                    time.sleep(next(pauses))
                if status not in ("paused", "running", "postmigrate"):
                    raise BackendError(f"restoring {self.name!r} left QEMU {status}: {self.hypervisor_log(800)}")
        except BaseException:
            terminate(self, 10)  # the record still says suspended: the saved state is kept
            raise
        # the state is loaded (QEMU has not run the guest yet): from here the machine is running
        self._update(status="running")
        saved.unlink()
        if status != "running":
            with self._monitor() as s:
                s.execute("cont")

    @_typed_os_errors
    def _do_pause(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("stop", timeout=timeout)

    @_typed_os_errors
    def _do_resume(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("cont", timeout=timeout)

    @_typed_os_errors
    def _do_suspend(self, timeout: float) -> None:
        tmp = self.dir / PARTIAL_STATE
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with self._monitor(timeout) as s:
                was_running = s.execute("query-status")["status"] == "running"
                s.execute("stop")
                try:
                    s.execute("migrate-set-parameters", {"max-bandwidth": _MIGRATION_BANDWIDTH})
                    s.send_fd(fd, "vmctl-save")
                    s.execute("migrate", {"uri": "fd:vmctl-save"})
                    self._wait_migration(s, timeout)
                except BaseException:
                    if was_running:
                        with contextlib.suppress(BackendError, OperationTimeout):
                            s.execute("cont")
                    raise
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.dir / SAVED_STATE)
        self._update(status="suspended")
        terminate(self, timeout)

    def _wait_migration(self, s: _qmp.QmpSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pauses = _qmp.backoff()
        while True:
            info = s.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise BackendError(
                    f"saving the state of {self.name!r} failed: {info.get('error-desc', status)}",
                    command="migrate",
                )
            if time.monotonic() > deadline:
                with contextlib.suppress(BackendError):
                    s.execute("migrate_cancel")
                raise OperationTimeout(f"saving the state of {self.name!r}", timeout)
            time.sleep(next(pauses))

    @_typed_os_errors
    def _do_request_shutdown(self) -> None:
        with self._monitor() as s:
            s.execute("system_powerdown")

    @_typed_os_errors
    def _do_poweroff(self, timeout: float) -> None:
        try:
            self._update(status="stopped", reboot_run=None)
        except OSError as exc:
            # a full disk must not keep a machine running: end it, then report
            terminate(self, timeout)
            discard_run_files(self.dir)
            raise BackendError(
                f"{self.name}: powered off, but the record could not be written ({exc}); "
                "it shows as crashed until it is started or destroyed",
                command=exc.filename,
            ) from exc
        terminate(self, timeout)
        discard_run_files(self.dir)

    def _cont_after_reset(self, s: _qmp.QmpSession, timeout: float) -> None:
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

    @_typed_os_errors
    def _do_reset(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("system_reset")
            self._cont_after_reset(s, timeout)

    @_typed_os_errors
    def _do_reboot(self, timeout: float) -> bool:
        # A graceful reboot as libvirt does it: let the guest shut down in response to the power
        # button, keep QEMU alive in the "shutdown" run state, then reset and continue. The record
        # notes the reboot so that the next verb restores the shutdown action if this process dies.
        deadline = time.monotonic() + timeout
        self._update(reboot_run=self._record().get("run_id"))
        with self._monitor(timeout) as s:
            s.execute("set-action", {"shutdown": "pause"})
            try:
                s.execute("system_powerdown")
                while s.execute("query-status")["status"] != "shutdown":
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.05)
                s.execute("system_reset")
                self._cont_after_reset(s, 30)
                return True
            finally:
                s.execute("set-action", {"shutdown": "poweroff"})
                self._update(reboot_run=None)

    # -- snapshots ---------------------------------------------------------------------------
    def _snapshot_disk(self, rec: dict[str, Any]) -> Path:
        disk = self._disk(rec)
        if disk is None or rec.get("disk_format") != "qcow2":
            raise Unsupported("qemu", "snapshots", _NO_SNAPSHOTS)
        return disk

    @_typed_os_errors
    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        rec = self._record()
        disk = self._snapshot_disk(rec)
        if self._process(rec) is None:
            run_tool([self.hypervisor.qemu_img, "snapshot", "-c", snapshot_tag(name), str(disk)], timeout=timeout)
        else:
            job = f"save-{uuid.uuid4().hex[:8]}"
            with self._monitor(timeout) as s:
                args = {"job-id": job, "tag": snapshot_tag(name), "vmstate": DISK_NODE, "devices": [DISK_NODE]}
                s.execute("snapshot-save", args, timeout=timeout)
                s.wait_job(job, timeout)
        notes = dict(rec.get("notes", {}))
        notes[name] = description
        self._update(notes=notes)
        return self._find_snapshot(name)

    def _do_snapshots(self) -> list[Snapshot]:
        rec = self._record()
        disk = self._disk(rec)
        if disk is None or rec.get("disk_format") != "qcow2":
            return []
        out = run_tool([self.hypervisor.qemu_img, "info", "--force-share", "--output=json", str(disk)], timeout=30)
        raw = json.loads(out.stdout).get("snapshots", [])
        raw.sort(key=lambda s: (s.get("date-sec", 0), s.get("date-nsec", 0), int(s.get("id", 0))))
        notes = rec.get("notes", {})
        result = []
        parent = None
        for item in raw:
            name = snapshot_name(item["name"])
            created = item.get("date-sec", 0) + item.get("date-nsec", 0) / 1e9
            has_memory = item.get("vm-state-size", 0) > 0
            result.append(Snapshot(name, created, has_memory, notes.get(name, ""), parent))
            parent = name
        return result

    @_typed_os_errors
    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        rec = self._record()
        disk = self._snapshot_disk(rec)
        alive = self._process(rec) is not None
        if snapshot.has_memory and alive:
            job = f"load-{uuid.uuid4().hex[:8]}"
            with self._monitor(timeout) as s:
                tag = snapshot_tag(snapshot.name)
                args = {"job-id": job, "tag": tag, "vmstate": DISK_NODE, "devices": [DISK_NODE]}
                s.execute("snapshot-load", args, timeout=timeout)
                s.wait_job(job, timeout)
                if s.execute("query-status")["status"] != "running":
                    s.execute("cont")
            return
        rec = self._update(status="stopped")  # before the saved state goes: never SUSPENDED without it
        if alive:
            terminate(self, timeout)
        discard_run_files(self.dir)
        if snapshot.has_memory:
            launch(self, rec, timeout, loadvm=snapshot_tag(snapshot.name))
        else:
            tag = snapshot_tag(snapshot.name)
            run_tool([self.hypervisor.qemu_img, "snapshot", "-a", tag, str(disk)], timeout=timeout)

    @_typed_os_errors
    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        rec = self._record()
        disk = self._snapshot_disk(rec)
        if self._process(rec) is not None:
            job = f"delete-{uuid.uuid4().hex[:8]}"
            with self._monitor(timeout) as s:
                args = {"job-id": job, "tag": snapshot_tag(name), "devices": [DISK_NODE]}
                s.execute("snapshot-delete", args, timeout=timeout)
                s.wait_job(job, timeout)
        else:
            run_tool([self.hypervisor.qemu_img, "snapshot", "-d", snapshot_tag(name), str(disk)], timeout=timeout)
        notes = dict(rec.get("notes", {}))
        notes.pop(name, None)
        self._update(notes=notes)

    # -- usage, network, destroy -------------------------------------------------------------
    def _do_usage(self) -> Usage:
        rec = self._record()
        proc = self._process(rec) if rec.get("status") != "suspended" else None
        if proc is None:
            return Usage(machine=self.name)
        read = write = None
        with contextlib.suppress(BackendError, OperationTimeout):
            with _qmp.session(self.dir / STATE_SOCKET, 5) as s:
                stats = s.execute("query-blockstats", timeout=5)
                read = sum(int(d["stats"]["rd_bytes"]) for d in stats)
                write = sum(int(d["stats"]["wr_bytes"]) for d in stats)
        return usage_of_process(self.name, proc.pid, disk_read_bytes=read, disk_write_bytes=write)

    @_typed_os_errors
    def _do_set_network(self, enabled: bool) -> None:
        with self._monitor() as s:
            s.execute("set_link", {"name": NIC_NETDEV, "up": enabled})

    @_typed_os_errors
    def _do_destroy(self, timeout: float) -> None:
        with contextlib.suppress(OSError):  # a full disk: the directory goes anyway
            self._update(status="stopped")
        terminate(self, timeout)
        self.hypervisor.store.remove(self.name)
