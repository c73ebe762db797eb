"""One QEMU machine: a directory with its record, overlay, sockets, logs and saved state.

Files in the machine's directory:

- ``machine.json``: the record (spec, intended status, current run id, snapshot notes)
- ``disk.qcow2``: the copy-on-write overlay over the base image (snapshots live inside it)
- ``qmp.sock`` / ``state.sock``: QMP monitors for commands (under the lock) and for queries
- ``run.json`` / ``exit.json``: written by the keeper: QEMU's pid, then its exit status
  and, rewritten on every QMP event of QEMU's run state, that run state, the event that changed
  it and when (trusted while the keeper lives and holds its lock on the file: :mod:`._keeper`)
- ``blockio.json``: a paused machine's disk byte counts, kept by the first reader after the
  pause for the readers until it resumes (:mod:`._usage`)
- ``state.bin``: the saved machine state while SUSPENDED (``state.bin.tmp`` while it is written)
- ``qemu.log``: QEMU's stderr, kept after a crash; ``console.log``: the serial console
  when the spec names no ``serial_log``

The verbs run inside the machine's exclusive section (``.lock``, an ``flock`` any process
respects), which begins by settling what a killed process left behind (:mod:`._recovery`).
Reading the state changes nothing: while another process holds the lock it reports the state
that process is moving from or through (never a false CRASHED), and a leftover reads as what the
record says the machine is (a poweroff that was recorded is STOPPED) until a verb settles it.
The run state comes from the keeper's ``run.json`` (no QMP round trip); QEMU is asked only
where the keeper cannot know (it is gone, or its monitor failed). A verb that moves the run state
returns only once the keeper has written the move, so the next reader sees it; waits wake on
inotify when those files change.
Processes are started and ended by :mod:`._launcher`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import psutil

from vmctl.backend.diskuse import allocated_bytes
from vmctl.backend.locking import lock_held
from vmctl.backend.records import inside, spec_from_record
from vmctl.backend.store import LOCK, RECORD
from vmctl.backend.tools import run_tool
from vmctl.errors import BackendError, InvalidState, OperationTimeout, Unsupported, VmctlError, os_error_code
from vmctl.interface import ALLOWED_FROM, POLL_INTERVAL, Machine
from vmctl.types import Capabilities, DiskUsage, MachineSpec, Snapshot, State, Usage

from . import _qmp
from ._command import DISK_NODE, NIC_NETDEV, QMP_SOCKET, STATE_SOCKET
from ._keeper import RUN_RECORD
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
from ._screenshot import DISPLAY_KEY, NO_DISPLAY, screendump
from ._sequences import (
    RUNSTATES,
    cont_after_reset,
    disk_snapshots,
    graceful_reboot,
    load_state,
    save_state,
    snapshot_name,
    snapshot_tag,
)
from ._throttle import THROTTLE_FILE, apply_cpu_limit, held
from ._usage import machine_cpu_seconds, machine_usage
from ._watch import DirWatch, NotedMoves, announce_move, await_runstate, held_state, watching

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

__all__ = ["KEEPER_SCRIPT", "QemuMachine", "snapshot_name", "snapshot_tag"]

log = logging.getLogger("vmctl.qemu")

#: "shutdown" only between power-off and reset during a graceful restart (-no-shutdown is not set)
_RUNSTATES = {**RUNSTATES, "shutdown": State.RUNNING}
_NO_SNAPSHOTS = "the machine has no qcow2 disk (create it with overlay=True)"
_MEDIA_NO_SNAPSHOTS = (
    "the machine has extra disks or a floppy, written as they are: a snapshot of its disk would not hold them"
)
# files whose change may change the state (each is replaced by a rename, or deleted)
_STATE_FILES = frozenset({RUN_RECORD, RECORD, "exit.json", SAVED_STATE})
# a wait on events re-reads the state at least this often (a lock released changes no file)
_EVENT_RECHECK = 5.0


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
        ends whatever is there). A monitor that vanished under the verb (QEMU ended by a caller
        outside vmctl, or by itself) is answered as the state then says."""
        try:
            with self._locked(timeout):
                if verb != "destroy":
                    settle(self, timeout)
                yield
        except _qmp.MonitorLost as exc:
            self._await_exit(3.0)
            state = self._get_state()
            if verb not in ALLOWED_FROM or state in ALLOWED_FROM[verb]:
                raise
            raise InvalidState(self.name, f"{verb} (QEMU went away meanwhile: {exc})", state) from exc
        except VmctlError:
            raise
        except OSError as exc:
            raise _os_error(self.name, verb, exc) from exc

    def _await_exit(self, timeout: float) -> None:
        """QEMU's monitor vanished under a command: QEMU is ending (killed, or quit by another
        caller); give it ``timeout`` to be gone, so that the state read next says what it was
        (CRASHED, STOPPED), not UNKNOWN for a QEMU that is still tearing itself down."""
        proc = self._process(self._record())
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout)

    def _recover_if_idle(self, rec: dict[str, Any] | None = None) -> None:
        """When a handle is opened: settle what a killed process left, unless a verb is running
        (it settles them itself). Failures are left for the next verb to report. ``rec``: the
        record as just read by the opener."""
        try:
            if has_leftovers(self, rec):
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
            caps = caps.without("snapshots", "live_snapshots")
        if self._why("screenshot"):
            caps = caps.without("screenshot")
        return caps

    def _why(self, capability: str) -> str:
        if capability in ("snapshots", "live_snapshots"):
            rec = self._record()
            if rec.get("disk") is None or rec.get("disk_format") != "qcow2":
                return _NO_SNAPSHOTS
            if self.spec.extra_disks or self.spec.floppy is not None:
                return _MEDIA_NO_SNAPSHOTS
        if capability == "screenshot" and self._record().get(DISPLAY_KEY) != "vga":
            return NO_DISPLAY
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
    def _process(self, rec: dict[str, Any], run: dict[str, Any] | None = None) -> psutil.Process | None:
        """The live QEMU process of the recorded run, or None."""
        return process_of(self.dir, rec, run)

    def _query_status(self, timeout: float = 5) -> str:
        with _qmp.session(self.dir / STATE_SOCKET, timeout) as s:
            status: str = s.execute("query-status", timeout=timeout)["status"]
            return status

    def _held_state(self, rec: dict[str, Any], run: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return held_state(self.dir, rec, run=run)

    def _runstate_now(self, rec: dict[str, Any], run: dict[str, Any] | None = None) -> str:
        """QEMU's run state: as the keeper holds it from QEMU's events, else asked over QMP;
        ``run``: the keeper's run.json as just read."""
        held = self._held_state(rec, run)
        if held is not None:
            return str(held["runstate"])
        return self._query_status()

    def _await_runstate(self, since: float, runstate: str) -> None:
        await_runstate(self, since, runstate)

    def _watch(self) -> contextlib.AbstractContextManager[DirWatch]:
        return watching(self.dir, _STATE_FILES)

    def _wait_changed(self, last: State, timeout: float) -> None:
        """Wake when a file the state is read from changes: the keeper writes QEMU's events.
        Without a live keeper (QEMU left running by one that was killed) this polls."""
        try:
            with self._watch() as watch:
                if self._get_state() is not last:
                    return  # moved between the caller's read and the watch
                rec = self._record()
                followed = self._held_state(rec) is not None or self._process(rec) is None
                limit = _EVENT_RECHECK if followed else POLL_INTERVAL
                watch.wait(min(limit, max(timeout, 0.0)))
        except (OSError, VmctlError):
            super()._wait_changed(last, timeout)

    @staticmethod
    def _runstate(runstate: str) -> State:
        return _RUNSTATES.get(runstate, State.UNKNOWN)

    def _get_state(self) -> State:
        # run.json is read once: the QEMU process and the event-held run state of one reading
        rec = self._record()
        run = read_json(self.dir, RUN_RECORD)
        proc = self._process(rec, run or {})
        if proc is None or rec.get("status") == "suspended":
            # a restore in progress, or the QEMU of an interrupted suspend or restore: the saved
            # state is what counts (a QEMU killed but not yet reaped, a zombie, counts as gone)
            return self._offline_state(rec)
        if rec.get("status") == "stopped" and not self._lock_busy():
            return State.STOPPED  # the QEMU of an interrupted poweroff: the next verb ends it
        try:
            runstate = self._runstate_now(rec, run)
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

    @_typed_os_errors
    def _get_remote_desktop_address(self) -> str | None:
        # QEMU picked the display itself (-vnc 127.0.0.1:0,to=...): ask it which.
        with _qmp.session(self.dir / STATE_SOCKET, 5) as s:
            vnc = s.execute("query-vnc", timeout=5)
        if not vnc.get("enabled") or not str(vnc.get("service", "")).isdigit():
            return None
        return f"127.0.0.1:{vnc['service']}"

    def _monitor(self, timeout: float = 10) -> contextlib.AbstractContextManager[_qmp.QmpSession]:
        return _qmp.locked_session(self.dir / QMP_SOCKET, timeout)

    # -- verbs -------------------------------------------------------------------------------
    @_typed_os_errors
    def _do_start(self, timeout: float) -> None:
        rec = self._record()
        if rec.get("status") == "suspended" and (self.dir / SAVED_STATE).is_file():
            launch(self, rec, timeout, incoming=True)
            self._restore(timeout)
        else:
            launch(self, rec, timeout)
        self._apply_cpu_limit()

    def _apply_cpu_limit(self, strict: bool = False) -> None:
        """The recorded CPU limit, on the QEMU process now running (or not running). Not
        ``strict`` (a start): a failure is logged, the machine runs unlimited."""
        rec = self._record()
        percent = int(rec.get("cpu_limit", 100))
        if percent < 100 or (self.dir / THROTTLE_FILE).exists():
            try:
                how = apply_cpu_limit(self.dir, self.name, self._process(rec), percent, self.spec.cpus)
            except (OSError, psutil.Error) as exc:
                if strict:
                    raise
                log.warning("%s: the CPU limit of %d%% is not applied: %s", self.name, percent, exc)
                return
            log.debug("%s: CPU limit %d%% (%s)", self.name, percent, how)

    @_typed_os_errors
    def _do_set_cpu_limit(self, percent: int) -> None:
        self._update(cpu_limit=percent)
        try:
            self._apply_cpu_limit(strict=True)
        except psutil.Error as exc:
            raise BackendError(f"{self.name}: cannot cap its CPU: {exc}", command="set_cpu_limit") from exc

    def _restore(self, timeout: float) -> None:
        saved = self.dir / SAVED_STATE
        deadline = time.monotonic() + timeout
        since = announce_move(self.dir)
        try:
            with open(saved, "rb") as f, self._monitor() as s:
                status = load_state(s, f, self.name, deadline, timeout, lambda: self.hypervisor_log(800))
        except BaseException:
            terminate(self, 10)  # the record still says suspended: the saved state is kept
            raise
        # the state is loaded (QEMU has not run the guest yet): from here the machine is running
        self._update(status="running")
        saved.unlink()
        if status != "running":
            with self._monitor() as s:
                s.execute("cont")
        self._await_runstate(since, "running")

    @_typed_os_errors
    def _do_pause(self, timeout: float) -> None:
        since = announce_move(self.dir)
        with self._monitor(timeout) as s:
            s.execute("stop", timeout=timeout)
        self._await_runstate(since, "paused")

    @_typed_os_errors
    def _do_resume(self, timeout: float) -> None:
        since = announce_move(self.dir)
        with self._monitor(timeout) as s:
            s.execute("cont", timeout=timeout)
        self._await_runstate(since, "running")

    @_typed_os_errors
    def _do_suspend(self, timeout: float) -> None:
        tmp = self.dir / PARTIAL_STATE
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with held(self.dir), self._monitor(timeout) as s:
                save_state(s, fd, self.name, timeout, NotedMoves(self))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.dir / SAVED_STATE)
        self._update(status="suspended")
        terminate(self, timeout)

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

    @_typed_os_errors
    def _do_reset(self, timeout: float) -> None:
        since = announce_move(self.dir)
        with self._monitor(timeout) as s:
            s.execute("system_reset")
            cont_after_reset(s, timeout)
        self._await_runstate(since, "running")

    @_typed_os_errors
    def _do_reboot(self, timeout: float) -> bool:
        # The record notes the reboot so that the next verb restores the shutdown action if this
        # process dies before graceful_reboot does.
        deadline = time.monotonic() + timeout
        since = announce_move(self.dir)
        self._update(reboot_run=self._record().get("run_id"))
        with self._monitor(timeout) as s:
            try:
                return graceful_reboot(s, deadline)
            finally:
                self._update(reboot_run=None)
                with contextlib.suppress(BackendError, OperationTimeout):
                    self._await_runstate(since, s.execute("query-status")["status"])

    # -- snapshots ---------------------------------------------------------------------------
    def _snapshot_disk(self, rec: dict[str, Any]) -> Path:
        disk = self._disk(rec)
        if disk is None or rec.get("disk_format") != "qcow2":
            raise Unsupported("qemu", "snapshots", _NO_SNAPSHOTS)
        if self.spec.extra_disks or self.spec.floppy is not None:
            raise Unsupported("qemu", "snapshots", _MEDIA_NO_SNAPSHOTS)
        return disk

    @_typed_os_errors
    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        rec = self._record()
        disk = self._snapshot_disk(rec)
        if self._process(rec) is None:
            run_tool([self.hypervisor.qemu_img, "snapshot", "-c", snapshot_tag(name), str(disk)], timeout=timeout)
        else:
            job = f"save-{uuid.uuid4().hex[:8]}"
            with held(self.dir), self._monitor(timeout) as s:
                args = {"job-id": job, "tag": snapshot_tag(name), "vmstate": DISK_NODE, "devices": [DISK_NODE]}
                since = announce_move(self.dir)
                s.execute("snapshot-save", args, timeout=timeout)
                s.wait_job(job, timeout)
                self._await_runstate(since, s.execute("query-status")["status"])
        notes = dict(rec.get("notes", {}))
        notes[name] = description
        self._update(notes=notes)
        return self._find_snapshot(name)

    def _do_snapshots(self) -> list[Snapshot]:
        rec = self._record()
        disk = self._disk(rec)
        if disk is None or rec.get("disk_format") != "qcow2":
            return []
        return disk_snapshots(self.hypervisor.qemu_img, disk, rec.get("notes", {}))

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
                since = announce_move(self.dir)
                s.execute("snapshot-load", args, timeout=timeout)
                s.wait_job(job, timeout)
                if s.execute("query-status")["status"] != "running":
                    s.execute("cont")
            self._await_runstate(since, "running")
            return
        rec = self._update(status="stopped")  # before the saved state goes: never SUSPENDED without it
        if alive:
            terminate(self, timeout)
        discard_run_files(self.dir)
        if snapshot.has_memory:
            launch(self, rec, timeout, loadvm=snapshot_tag(snapshot.name))
            self._apply_cpu_limit()
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
    def _do_disk_usage(self) -> DiskUsage:
        # overlay, saved state, console and qemu logs, records: all in the machine's directory
        return DiskUsage(self.name, allocated_bytes([self.dir]) or 0, (str(self.dir),))

    def _do_usage(self) -> Usage:
        return machine_usage(self, self._record())

    def _do_cpu_seconds(self) -> float | None:
        return machine_cpu_seconds(self, self._record())

    @_typed_os_errors
    def _do_screenshot(self, timeout: float) -> bytes:
        return screendump(self._monitor, self.hypervisor.name, timeout)

    def _do_set_network(self, enabled: bool) -> None:
        with self._monitor() as s:
            s.execute("set_link", {"name": NIC_NETDEV, "up": enabled})

    @_typed_os_errors
    def _do_destroy(self, timeout: float) -> None:
        with contextlib.suppress(OSError):  # a full disk: the directory goes anyway
            self._update(status="stopped")
        terminate(self, timeout)
        self.hypervisor.store.remove(self.name)
