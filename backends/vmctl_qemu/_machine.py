"""One QEMU machine: a directory with its record, overlay, sockets, logs and saved state.

Files in the machine's directory:

- ``machine.json``: the record (spec, intended status, current run id, snapshot notes)
- ``disk.qcow2``: the copy-on-write overlay over the base image (snapshots live inside it)
- ``qmp.sock`` / ``state.sock``: QMP monitors for commands (under the lock) and for queries
- ``run.json`` / ``exit.json``: written by the keeper: QEMU's pid, then its exit status
- ``state.bin``: the saved machine state while SUSPENDED (``state.bin.tmp`` while it is written)
- ``qemu.log``: QEMU's stderr, kept after a crash; ``console.log``: the serial console
  when the spec names no ``serial_log``

Any process may be killed at any point of a verb. Every verb therefore begins, under the machine's
lock, by settling what a killed process left behind (:meth:`QemuMachine._settle`): it finishes an
interrupted suspend whose state was saved, drops a leftover QEMU of an interrupted suspend or
restore (the saved state stays authoritative), adopts a QEMU whose launcher died, quits a QEMU left
powered down by an interrupted graceful restart, and deletes partial and stale files. State queries
do the same when they notice such a leftover and the lock is free; while another process holds the
lock they report the state that process is moving from or through (never a false CRASHED).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import psutil

from vmctl.backend.locking import lock_held
from vmctl.backend.records import spec_from_record
from vmctl.backend.store import LOCK, RECORD, atomic_write
from vmctl.backend.tools import run_tool
from vmctl.backend.usage import pid_alive, usage_of_process
from vmctl.errors import BackendError, InvalidState, OperationTimeout, Unsupported, VmctlError
from vmctl.interface import ALLOWED_FROM, Machine
from vmctl.types import MachineSpec, Snapshot, State, Usage

from . import _qmp
from ._command import DISK_NODE, NIC_NETDEV, QMP_SOCKET, STATE_SOCKET, qemu_argv

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

log = logging.getLogger("vmctl.qemu")

SAVED_STATE = "state.bin"
PARTIAL_STATE = SAVED_STATE + ".tmp"
#: run as a script (not with -m): importing the vmctl_qemu package would add 40 ms to every start
KEEPER_SCRIPT = str(Path(__file__).resolve().with_name("_keeper.py"))
# query-migrate states of a migration that is still going on
_MIGRATING = ("setup", "active", "device", "pre-switchover", "wait-unplug", "cancelling", "postcopy-active")
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
            what = method.__name__.lstrip("_").removeprefix("do_")
            path = str(exc.filename) if exc.filename is not None else None
            raise BackendError(f"{self.name}: {what} failed: {exc}", command=path) from exc

    return functools.update_wrapper(wrapper, method)


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

    # -- records -----------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return self.hypervisor.store.read(self.name)

    def _update(self, **changes: Any) -> dict[str, Any]:
        return self.hypervisor.store.update(self.name, **changes)

    @contextlib.contextmanager
    def _locked(self, timeout: float = 600) -> Iterator[None]:
        with self.hypervisor.store.locked(self.name, timeout):
            yield

    def _lock_busy(self) -> bool:
        """True while some process (this one included) holds the machine's lock."""
        return lock_held(self.dir / LOCK)

    def _settle_if_idle(self) -> State | None:
        """Settle leftovers now if no verb is in progress; None if one is (it will settle them)."""
        try:
            with self._locked(timeout=0):
                return self._settle()
        except OperationTimeout:
            return None

    def _read_json(self, filename: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.dir / filename).read_bytes())
            return data
        except (FileNotFoundError, ValueError):
            return None

    @property
    def spec(self) -> MachineSpec:
        if self._spec is None:
            self._spec = spec_from_record(self._record()["spec"])
        return self._spec

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
        return self.dir / disk if not os.path.isabs(disk) else Path(disk)

    # -- the QEMU process --------------------------------------------------------------------
    def _process(self, rec: dict[str, Any]) -> psutil.Process | None:
        """The live QEMU process of the recorded run, or None."""
        run = self._read_json("run.json")
        if not run or run.get("run_id") != rec.get("run_id"):
            return None
        try:
            proc = psutil.Process(int(run["qemu_pid"]))
            if proc.create_time() != run.get("qemu_created") or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _query_status(self, timeout: float = 5) -> str:
        with _qmp.session(self.dir / STATE_SOCKET, timeout) as s:
            status: str = s.execute("query-status", timeout=timeout)["status"]
            return status

    def _get_state(self) -> State:
        rec = self._record()
        proc = self._process(rec)
        if proc is None:
            return self._offline_state(rec)
        if rec.get("status") in ("suspended", "stopped"):
            # a restore, suspend or poweroff in progress, or a QEMU left by an interrupted one:
            # the saved state (or the power-off) is what counts
            settled = self._settle_if_idle() if not self._lock_busy() else None
            if settled is not None or rec.get("status") == "suspended":
                return settled or self._offline_state(rec)
        try:
            runstate = self._query_status()
        except (BackendError, OperationTimeout):
            try:
                alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:  # it died meanwhile (and its keeper reaped it)
                alive = False
            if alive:
                return State.UNKNOWN
            return self._offline_state(self._record())
        if runstate in ("shutdown", "postmigrate"):
            # mid-reboot or mid-suspend if a verb holds the lock; else left so by a killed process
            settled = self._settle_if_idle() if not self._lock_busy() else None
            if settled is not None:
                return settled
        return _RUNSTATES.get(runstate, State.UNKNOWN)

    def _offline_state(self, rec: dict[str, Any]) -> State:
        status = rec.get("status")
        if status == "stopped":
            return State.STOPPED
        if status == "suspended":
            return State.SUSPENDED if (self.dir / SAVED_STATE).is_file() else State.CRASHED
        run_id = rec.get("run_id")
        ended = self._exit_record(run_id)
        if ended:
            return State.STOPPED if ended.get("status") == 0 else State.CRASHED  # 0: the guest powered off
        run = self._read_json("run.json")
        if not (run and run.get("run_id") == run_id) and (self._lock_busy() or self._orphan_keeper(run_id)):
            return State.UNKNOWN  # being launched: its keeper has not started QEMU yet
        return State.CRASHED

    def _exit_record(self, run_id: str | None, grace: float = 3.0) -> dict[str, Any] | None:
        """The keeper's exit record of ``run_id``; waits briefly while the keeper is writing it."""
        deadline = time.monotonic() + grace
        while True:
            ended = self._read_json("exit.json")
            if ended and ended.get("run_id") == run_id:
                return ended
            run = self._read_json("run.json")
            keeper_alive = bool(run and run.get("run_id") == run_id and pid_alive(run.get("keeper_pid")))
            if not keeper_alive or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def _orphan_keeper(self, run_id: str | None) -> psutil.Process | None:
        """A keeper of ``run_id`` whose launcher died before it recorded QEMU's pid."""
        if not run_id:
            return None
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if KEEPER_SCRIPT in cmd and run_id in cmd and str(self.dir) in cmd:
                return proc
        return None

    def _get_pid(self) -> int | None:
        rec = self._record()
        if rec.get("status") == "suspended":
            return None  # a restore in progress, or a leftover that the next verb ends
        proc = self._process(rec)
        return proc.pid if proc is not None else None

    def _recheck(self, verb: str, timeout: float = 300) -> State:
        """Inside the lock: settle leftovers, then check the state again (it may have changed)."""
        state = self._settle(timeout)
        if state not in ALLOWED_FROM[verb]:
            raise InvalidState(self.name, verb, state, ALLOWED_FROM[verb])
        return state

    # -- recovery ----------------------------------------------------------------------------
    @_typed_os_errors
    def _settle(self, timeout: float = 300) -> State:
        """Under the lock: finish or undo what a process killed in the middle of a verb left
        behind, then return the machine's state. Cheap when there is nothing to do."""
        for junk in self.dir.glob(f".{RECORD}.*.tmp"):  # atomic_write's temp files (written under this lock)
            junk.unlink(missing_ok=True)
        rec = self._record()
        saved, partial = self.dir / SAVED_STATE, self.dir / PARTIAL_STATE
        proc = self._process(rec)
        if proc is None and rec.get("status") == "running" and self._adopt_orphan(rec, timeout):
            proc = self._process(rec)
        if proc is None:
            partial.unlink(missing_ok=True)
            if rec.get("status") != "suspended":
                saved.unlink(missing_ok=True)
            if rec.get("reboot_run"):
                rec = self._update(reboot_run=None)
            return self._offline_state(rec)
        if rec.get("status") in ("suspended", "stopped"):
            # the leftover QEMU of an interrupted suspend (after the save), restore (before it
            # completed) or poweroff: it has not run the guest since the state was saved, or was
            # being powered off; finish the job
            log.warning("%s: ending the QEMU left by an interrupted %s", self.name, rec["status"])
            self._terminate(30)
            partial.unlink(missing_ok=True)
            if rec.get("status") == "stopped":
                saved.unlink(missing_ok=True)
            return self._offline_state(self._record())
        try:
            runstate = self._query_status()
        except (BackendError, OperationTimeout):
            return State.UNKNOWN if proc.is_running() else self._offline_state(self._record())
        if runstate == "shutdown":
            # the guest powered off during a graceful restart whose process died before the reset
            log.warning("%s: guest powered off during an interrupted restart; ending QEMU", self.name)
            self._update(status="stopped", reboot_run=None)
            self._terminate(30)
            partial.unlink(missing_ok=True)
            saved.unlink(missing_ok=True)
            return State.STOPPED
        if rec.get("reboot_run"):
            with self._monitor() as s:
                s.execute("set-action", {"shutdown": "poweroff"})
            self._update(reboot_run=None)
        if partial.exists() or runstate == "postmigrate":
            finished = self._finish_suspend(runstate, timeout)
            if finished is not None:
                return finished
        elif saved.exists():
            saved.unlink()  # a running machine's saved state is stale (an interrupted restore's)
        return _RUNSTATES.get(runstate, State.UNKNOWN)

    def _adopt_orphan(self, rec: dict[str, Any], timeout: float) -> bool:
        """The launcher of the recorded run died before its keeper recorded QEMU: wait for the
        keeper to start QEMU (True) or to give up; record a run that never started as ended."""
        run_id = rec.get("run_id")
        run = self._read_json("run.json")
        if (run and run.get("run_id") == run_id) or self._exit_record(run_id, grace=0):
            return False
        keeper = self._orphan_keeper(run_id)
        deadline = time.monotonic() + min(timeout, 30)
        pauses = _qmp.backoff()
        while keeper is not None and keeper.is_running() and time.monotonic() < deadline:
            run = self._read_json("run.json")
            if run and run.get("run_id") == run_id:
                log.warning("%s: adopting the QEMU started for a launcher that died", self.name)
                self._wait_qmp(time.monotonic() + 10)
                return True
            time.sleep(next(pauses))
        if keeper is not None and keeper.is_running():
            keeper.kill()
        atomic_write(self.dir / "exit.json", json.dumps({"run_id": run_id, "status": None}).encode())
        return False

    def _wait_qmp(self, deadline: float) -> None:
        pauses = _qmp.backoff()
        while time.monotonic() < deadline:
            with contextlib.suppress(BackendError, OperationTimeout):
                self._query_status(timeout=2)
                return
            time.sleep(next(pauses))

    def _finish_suspend(self, runstate: str, timeout: float) -> State | None:
        """A suspend was interrupted: finish it if QEMU saved the whole state, else discard the
        partial file. Returns SUSPENDED when finished, None when the machine stays as it is."""
        saved, partial = self.dir / SAVED_STATE, self.dir / PARTIAL_STATE
        deadline = time.monotonic() + timeout
        pauses = _qmp.backoff()
        with self._monitor() as s:
            while (status := s.execute("query-migrate").get("status")) in _MIGRATING:
                if time.monotonic() > deadline:
                    s.execute("migrate_cancel")
                    raise OperationTimeout(f"the interrupted state save of {self.name!r}", timeout)
                time.sleep(next(pauses))
            runstate = s.execute("query-status")["status"]
        if status == "completed" and runstate == "postmigrate":
            if partial.exists():
                with open(partial, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(partial, saved)
            if saved.is_file():
                log.warning("%s: finishing an interrupted suspend (its state was saved)", self.name)
                self._update(status="suspended")
                self._terminate(30)
                return State.SUSPENDED
        partial.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)
        return None

    # -- launching and ending QEMU -----------------------------------------------------------
    def _launch(
        self, rec: dict[str, Any], timeout: float, *, incoming: bool = False, loadvm: str | None = None
    ) -> None:
        hv = self.hypervisor
        for stale in (QMP_SOCKET, STATE_SOCKET, "run.json", "exit.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        spec = self.spec
        argv = qemu_argv(
            spec,
            binary=hv.qemu_binary,
            accel=hv.accel,
            machine_type=hv.machine_type,
            disk=self._disk(rec),
            disk_format=rec.get("disk_format", "qcow2"),
            serial_log=self.serial_log,
            incoming=incoming,
            loadvm=loadvm,
            cpu_model=hv.cpu_model,
        )
        run_id = uuid.uuid4().hex
        previous = {"status": rec.get("status"), "run_id": rec.get("run_id")}
        # a restore stays "suspended" until the saved state is loaded: if this process dies
        # before that, the saved state is still the machine's state
        self._update(status="suspended" if incoming else "running", run_id=run_id)
        log.debug("%s: %s", self.name, argv)
        with open(self.dir / "qemu.log", "ab") as err:
            err.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id}: {' '.join(argv)}\n".encode())
            err.flush()
            keeper = subprocess.Popen(
                [sys.executable, KEEPER_SCRIPT, str(self.dir), run_id, "--", *argv],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # the VM outlives this process and its terminal
            )
        threading.Thread(target=keeper.wait, name=f"vmctl-reap-{keeper.pid}", daemon=True).start()
        deadline = time.monotonic() + timeout
        pauses = _qmp.backoff()
        while True:
            ended = self._read_json("exit.json")
            if keeper.poll() is not None or (ended and ended.get("run_id") == run_id):
                self._update(**previous)
                raise BackendError(
                    f"QEMU exited while starting {self.name!r}: {self.hypervisor_log(1500).strip()[-1500:]}",
                    command=argv,
                    stderr=self.hypervisor_log(),
                )
            run = self._read_json("run.json")
            if run and run.get("run_id") == run_id and (self.dir / STATE_SOCKET).exists():
                with contextlib.suppress(BackendError, OperationTimeout):
                    self._query_status(timeout=2)
                    return
            if time.monotonic() > deadline:
                self._kill_run(run)
                self._update(**previous)
                raise OperationTimeout(f"starting QEMU for {self.name!r}", timeout)
            time.sleep(next(pauses))

    def _kill_run(self, run: dict[str, Any] | None) -> None:
        if run:
            with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
                os.kill(int(run["qemu_pid"]), signal.SIGKILL)

    def _terminate(self, timeout: float) -> None:
        """End the QEMU process: QMP quit, then SIGKILL at the deadline; then wait for its keeper
        to record the exit and end too, so that no process of the machine outlives the verb.
        Caller holds the lock."""
        proc = self._process(self._record())
        if proc is None:
            return
        run = self._read_json("run.json") or {}
        self._end_qemu(proc, timeout)
        deadline = time.monotonic() + 10
        while pid_alive(run.get("keeper_pid")) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _end_qemu(self, proc: psutil.Process, timeout: float) -> None:
        with contextlib.suppress(BackendError, OperationTimeout):
            with _qmp.session(self.dir / QMP_SOCKET, 5) as s:
                s.execute("quit", timeout=5)
        try:
            proc.wait(timeout=max(1.0, min(timeout, 30)))
        except psutil.TimeoutExpired:
            log.warning("%s: QEMU did not quit; killing pid %d", self.name, proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
                proc.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass

    def _monitor(self, timeout: float = 10) -> contextlib.AbstractContextManager[_qmp.QmpSession]:
        return _qmp.session(self.dir / QMP_SOCKET, timeout)

    # -- verbs -------------------------------------------------------------------------------
    @_typed_os_errors
    def _do_start(self, timeout: float) -> None:
        with self._locked(timeout):
            state = self._recheck("start", timeout)
            rec = self._record()
            if state is State.SUSPENDED:
                self._launch(rec, timeout, incoming=True)
                self._restore(timeout)
            else:
                self._launch(rec, timeout)

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
            self._terminate(10)  # the record still says suspended: the saved state is kept
            raise
        # the state is loaded (QEMU has not run the guest yet): from here the machine is running
        self._update(status="running")
        saved.unlink()
        if status != "running":
            with self._monitor() as s:
                s.execute("cont")

    @_typed_os_errors
    def _do_pause(self, timeout: float) -> None:
        with self._locked(timeout):
            self._recheck("pause", timeout)
            with self._monitor(timeout) as s:
                s.execute("stop", timeout=timeout)

    @_typed_os_errors
    def _do_resume(self, timeout: float) -> None:
        with self._locked(timeout):
            self._recheck("resume", timeout)
            with self._monitor(timeout) as s:
                s.execute("cont", timeout=timeout)

    @_typed_os_errors
    def _do_suspend(self, timeout: float) -> None:
        with self._locked(timeout):
            state = self._recheck("suspend", timeout)
            tmp = self.dir / PARTIAL_STATE
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with self._monitor(timeout) as s:
                    s.execute("stop")
                    try:
                        s.execute("migrate-set-parameters", {"max-bandwidth": _MIGRATION_BANDWIDTH})
                        s.send_fd(fd, "vmctl-save")
                        s.execute("migrate", {"uri": "fd:vmctl-save"})
                        self._wait_migration(s, timeout)
                    except BaseException:
                        if state is State.RUNNING:
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
            self._terminate(timeout)

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
        with self._locked(30):
            if self._settle(30) not in (State.RUNNING, State.PAUSED):
                return  # it went down meanwhile
            with self._monitor() as s:
                s.execute("system_powerdown")

    def _discard_run_files(self) -> None:
        for name in (SAVED_STATE, PARTIAL_STATE):
            (self.dir / name).unlink(missing_ok=True)
        for junk in self.dir.glob(f".{RECORD}.*.tmp"):
            junk.unlink(missing_ok=True)

    @_typed_os_errors
    def _do_poweroff(self, timeout: float) -> None:
        with self._locked(timeout):
            try:
                self._update(status="stopped", reboot_run=None)
            except OSError as exc:
                # a full disk must not keep a machine running: end it, then report
                self._terminate(timeout)
                self._discard_run_files()
                raise BackendError(
                    f"{self.name}: powered off, but the record could not be written ({exc}); "
                    "it shows as crashed until it is started or destroyed",
                    command=exc.filename,
                ) from exc
            self._terminate(timeout)
            self._discard_run_files()

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
        with self._locked(timeout):
            self._recheck("restart", timeout)
            with self._monitor(timeout) as s:
                s.execute("system_reset")
                self._cont_after_reset(s, timeout)

    @_typed_os_errors
    def _do_reboot(self, timeout: float) -> bool:
        # A graceful reboot as libvirt does it: let the guest shut down in response to the power
        # button, keep QEMU alive in the "shutdown" run state, then reset and continue. The record
        # notes the reboot so that the next verb restores the shutdown action if this process dies.
        deadline = time.monotonic() + timeout
        with self._locked(timeout):
            self._recheck("restart", timeout)
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
            raise Unsupported("qemu", "snapshots", "the machine needs a qcow2 disk (use overlay=True)")
        return disk

    @_typed_os_errors
    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        with self._locked(timeout):
            state = self._recheck("snapshot", timeout)
            rec = self._record()
            disk = self._snapshot_disk(rec)
            if state is State.STOPPED:
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
        with self._locked(timeout):
            self._recheck("revert", timeout)
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
                self._terminate(timeout)
            self._discard_run_files()
            if snapshot.has_memory:
                self._launch(rec, timeout, loadvm=snapshot_tag(snapshot.name))
            else:
                tag = snapshot_tag(snapshot.name)
                run_tool([self.hypervisor.qemu_img, "snapshot", "-a", tag, str(disk)], timeout=timeout)

    @_typed_os_errors
    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        with self._locked(timeout):
            self._recheck("delete_snapshot", timeout)
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
        with self._locked(30):
            self._recheck("set_network", 30)
            with self._monitor() as s:
                s.execute("set_link", {"name": NIC_NETDEV, "up": enabled})

    @_typed_os_errors
    def _do_destroy(self, timeout: float) -> None:
        with self._locked(timeout):
            with contextlib.suppress(OSError):  # a full disk: the directory goes anyway
                self._update(status="stopped")
            self._terminate(timeout)
            self.hypervisor.store.remove(self.name)
