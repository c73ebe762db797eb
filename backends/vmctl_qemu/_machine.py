"""One QEMU machine: a directory with its record, overlay, sockets, logs and saved state.

Files in the machine's directory:

- ``machine.json``: the record (spec, intended status, current run id, snapshot notes)
- ``disk.qcow2``: the copy-on-write overlay over the base image (snapshots live inside it)
- ``qmp.sock`` / ``state.sock``: QMP monitors for commands (under the lock) and for queries
- ``run.json`` / ``exit.json``: written by the keeper: QEMU's pid, then its exit status
- ``state.bin``: the saved machine state while SUSPENDED
- ``qemu.log``: QEMU's stderr, kept after a crash; ``console.log``: the serial console
  when the spec names no ``serial_log``
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from vmctl.errors import BackendError, InvalidState, OperationTimeout, Unsupported
from vmctl.interface import ALLOWED_FROM, Machine
from vmctl.tools import run_tool
from vmctl.types import MachineSpec, Snapshot, State, Usage
from vmctl.usage import pid_alive, process_tree_usage

from . import _qmp
from ._command import DISK_NODE, NIC_NETDEV, QMP_SOCKET, STATE_SOCKET, qemu_argv

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

log = logging.getLogger("vmctl.qemu")

SAVED_STATE = "state.bin"
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
_MIGRATION_BANDWIDTH = 1 << 34  # bytes/s: a stopped VM's state is written as fast as the disk takes it


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

    def _read_json(self, filename: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.dir / filename).read_bytes())
            return data
        except (FileNotFoundError, ValueError):
            return None

    @property
    def spec(self) -> MachineSpec:
        if self._spec is None:
            self._spec = MachineSpec.from_record(self._record()["spec"])
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
        if proc is not None:
            try:
                return _RUNSTATES.get(self._query_status(), State.UNKNOWN)
            except (BackendError, OperationTimeout):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return State.UNKNOWN
                rec = self._record()
        return self._offline_state(rec)

    def _offline_state(self, rec: dict[str, Any]) -> State:
        status = rec.get("status")
        if status == "stopped":
            return State.STOPPED
        if status == "suspended":
            return State.SUSPENDED if (self.dir / SAVED_STATE).is_file() else State.CRASHED
        ended = self._exit_record(rec.get("run_id"))
        if ended and ended.get("status") == 0:
            return State.STOPPED  # the guest powered itself off
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

    def _get_pid(self) -> int | None:
        proc = self._process(self._record())
        return proc.pid if proc is not None else None

    def _recheck(self, verb: str) -> State:
        """Inside the lock: the state may have changed since the unlocked check."""
        state = self._get_state()
        if state not in ALLOWED_FROM[verb]:
            raise InvalidState(self.name, verb, state, ALLOWED_FROM[verb])
        return state

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
        )
        run_id = uuid.uuid4().hex
        previous = {"status": rec.get("status"), "run_id": rec.get("run_id")}
        self._update(status="running", run_id=run_id)
        log.debug("%s: %s", self.name, argv)
        with open(self.dir / "qemu.log", "ab") as err:
            err.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id}: {' '.join(argv)}\n".encode())
            err.flush()
            keeper = subprocess.Popen(
                [sys.executable, "-m", "vmctl_qemu._keeper", str(self.dir), run_id, "--", *argv],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # the VM outlives this process and its terminal
            )
        threading.Thread(target=keeper.wait, name=f"vmctl-reap-{keeper.pid}", daemon=True).start()
        deadline = time.monotonic() + timeout
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
            time.sleep(0.02)

    def _kill_run(self, run: dict[str, Any] | None) -> None:
        if run:
            with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
                os.kill(int(run["qemu_pid"]), signal.SIGKILL)

    def _terminate(self, timeout: float) -> None:
        """End the QEMU process: QMP quit, then SIGKILL at the deadline. Caller holds the lock."""
        proc = self._process(self._record())
        if proc is None:
            return
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
    def _do_start(self, timeout: float) -> None:
        with self._locked(timeout):
            state = self._recheck("start")
            rec = self._record()
            if state is State.SUSPENDED:
                self._launch(rec, timeout, incoming=True)
                self._restore(timeout)
            else:
                self._launch(rec, timeout)

    def _restore(self, timeout: float) -> None:
        saved = self.dir / SAVED_STATE
        deadline = time.monotonic() + timeout
        try:
            with open(saved, "rb") as f, self._monitor() as s:
                s.send_fd(f.fileno(), "vmctl-restore")
                s.execute("migrate-incoming", {"uri": "fd:vmctl-restore"})
                while (status := s.execute("query-status")["status"]) == "inmigrate":
                    if time.monotonic() > deadline:
                        raise OperationTimeout(f"restoring {self.name!r}", timeout)
                    time.sleep(0.02)
                if status not in ("paused", "running", "postmigrate"):
                    raise BackendError(f"restoring {self.name!r} left QEMU {status}: {self.hypervisor_log(800)}")
                if status != "running":
                    s.execute("cont")
        except BaseException:
            self._update(status="suspended")
            self._terminate(10)
            raise
        saved.unlink()

    def _do_pause(self, timeout: float) -> None:
        with self._locked(timeout):
            self._recheck("pause")
            with self._monitor(timeout) as s:
                s.execute("stop", timeout=timeout)

    def _do_resume(self, timeout: float) -> None:
        with self._locked(timeout):
            if self._get_state() is not State.PAUSED:
                self._recheck("resume")
            with self._monitor(timeout) as s:
                s.execute("cont", timeout=timeout)

    def _do_suspend(self, timeout: float) -> None:
        with self._locked(timeout):
            state = self._recheck("suspend")
            tmp = self.dir / (SAVED_STATE + ".tmp")
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
            time.sleep(0.02)

    def _do_request_shutdown(self) -> None:
        with self._locked(30):
            with self._monitor() as s:
                s.execute("system_powerdown")

    def _do_poweroff(self, timeout: float) -> None:
        with self._locked(timeout):
            self._update(status="stopped")
            self._terminate(timeout)
            (self.dir / SAVED_STATE).unlink(missing_ok=True)

    def _cont_after_reset(self, s: _qmp.QmpSession, timeout: float) -> None:
        """Resume once QEMU has processed a reset (``cont`` is refused until then)."""
        deadline = time.monotonic() + timeout
        while s.execute("query-status")["status"] != "running":
            try:
                s.execute("cont")
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _do_reset(self, timeout: float) -> None:
        with self._locked(timeout), self._monitor(timeout) as s:
            s.execute("system_reset")
            self._cont_after_reset(s, timeout)

    def _do_reboot(self, timeout: float) -> bool:
        # A graceful reboot as libvirt does it: let the guest shut down in response to the
        # power button, keep QEMU alive in the "shutdown" run state, then reset and continue.
        deadline = time.monotonic() + timeout
        with self._locked(timeout), self._monitor(timeout) as s:
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

    # -- snapshots ---------------------------------------------------------------------------
    def _snapshot_disk(self, rec: dict[str, Any]) -> Path:
        disk = self._disk(rec)
        if disk is None or rec.get("disk_format") != "qcow2":
            raise Unsupported("qemu", "snapshots", "the machine needs a qcow2 disk (use overlay=True)")
        return disk

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        with self._locked(timeout):
            state = self._recheck("snapshot")
            rec = self._record()
            disk = self._snapshot_disk(rec)
            if state is State.STOPPED:
                run_tool([self.hypervisor.qemu_img, "snapshot", "-c", name, str(disk)], timeout=timeout)
            else:
                job = f"save-{uuid.uuid4().hex[:8]}"
                with self._monitor(timeout) as s:
                    args = {"job-id": job, "tag": name, "vmstate": DISK_NODE, "devices": [DISK_NODE]}
                    s.execute("snapshot-save", args)
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
            name = item["name"]
            created = item.get("date-sec", 0) + item.get("date-nsec", 0) / 1e9
            has_memory = item.get("vm-state-size", 0) > 0
            result.append(Snapshot(name, created, has_memory, notes.get(name, ""), parent))
            parent = name
        return result

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        with self._locked(timeout):
            rec = self._record()
            disk = self._snapshot_disk(rec)
            alive = self._process(rec) is not None
            if snapshot.has_memory and alive:
                job = f"load-{uuid.uuid4().hex[:8]}"
                with self._monitor(timeout) as s:
                    args = {"job-id": job, "tag": snapshot.name, "vmstate": DISK_NODE, "devices": [DISK_NODE]}
                    s.execute("snapshot-load", args)
                    s.wait_job(job, timeout)
                    if s.execute("query-status")["status"] != "running":
                        s.execute("cont")
                return
            if alive:
                self._update(status="stopped")
                self._terminate(timeout)
            (self.dir / SAVED_STATE).unlink(missing_ok=True)
            if snapshot.has_memory:
                self._launch(self._update(status="stopped"), timeout, loadvm=snapshot.name)
            else:
                run_tool([self.hypervisor.qemu_img, "snapshot", "-a", snapshot.name, str(disk)], timeout=timeout)
                self._update(status="stopped")

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        with self._locked(timeout):
            rec = self._record()
            disk = self._snapshot_disk(rec)
            if self._process(rec) is not None:
                job = f"delete-{uuid.uuid4().hex[:8]}"
                with self._monitor(timeout) as s:
                    s.execute("snapshot-delete", {"job-id": job, "tag": name, "devices": [DISK_NODE]})
                    s.wait_job(job, timeout)
            else:
                run_tool([self.hypervisor.qemu_img, "snapshot", "-d", name, str(disk)], timeout=timeout)
            notes = dict(rec.get("notes", {}))
            notes.pop(name, None)
            self._update(notes=notes)

    # -- usage, network, destroy -------------------------------------------------------------
    def _do_usage(self) -> Usage:
        proc = self._process(self._record())
        if proc is None:
            return Usage(machine=self.name)
        try:
            pu = process_tree_usage(proc.pid)
        except psutil.NoSuchProcess:
            return Usage(machine=self.name)
        read = write = None
        with contextlib.suppress(BackendError, OperationTimeout):
            with _qmp.session(self.dir / STATE_SOCKET, 5) as s:
                stats = s.execute("query-blockstats", timeout=5)
                read = sum(int(d["stats"]["rd_bytes"]) for d in stats)
                write = sum(int(d["stats"]["wr_bytes"]) for d in stats)
        return Usage(
            machine=self.name,
            cpu_seconds=pu.cpu_seconds,
            memory_bytes=pu.memory_bytes,
            disk_read_bytes=read if read is not None else pu.read_bytes,
            disk_write_bytes=write if write is not None else pu.write_bytes,
        )

    def _do_set_network(self, enabled: bool) -> None:
        with self._locked(30), self._monitor() as s:
            s.execute("set_link", {"name": NIC_NETDEV, "up": enabled})

    def _do_destroy(self, timeout: float) -> None:
        with self._locked(timeout):
            self._update(status="stopped")
            self._terminate(timeout)
            self.hypervisor.store.remove(self.name)
