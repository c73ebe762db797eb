"""A QEMU that vmctl did not start, adopted through its QMP socket (:meth:`QemuHypervisor.adopt`).

Adoption records, in ``state_dir/NAME/machine.json``, the socket, the process's command line and
working directory (read from ``/proc`` through the socket's peer: QEMU must run on this host),
and a spec read from QMP and that command line. From then on any process opening the same
``state_dir`` reaches the machine with ``hv.machine(NAME)``:

- the state is QMP's ``query-status``; no process answering on the socket is STOPPED (vmctl is not
  the parent of an adopted QEMU and cannot see how it ended, so a killed QEMU is STOPPED too);
- ``start`` of a STOPPED machine runs the recorded command line again (in a new session, so it
  outlives the caller), and waits for the socket to answer;
- pause/resume, power-off (``quit``), ACPI stop, hard and graceful restart, snapshots (in the
  qcow2 disk, with ``snapshot-save`` while it runs, ``qemu-img`` while it does not), usage and the
  NIC's link work as on vmctl's machines; ``suspend`` saves the state into the machine's
  directory and ends QEMU, and ``start`` runs the command line again with ``-incoming defer``
  to load it;
- ``destroy`` ends the QEMU, forgets the record, and deletes the disk image only with
  ``delete_disks=True``.

The socket must be free for vmctl: QMP serves one client at a time, so a QEMU that libvirt or
another tool keeps a monitor connection to needs a second ``-qmp unix:PATH,server=on,wait=off``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from vmctl.backend.diskuse import allocated_bytes
from vmctl.backend.records import spec_from_record
from vmctl.backend.tools import run_tool
from vmctl.backend.usage import usage_of_process
from vmctl.errors import BackendError, InvalidSpec, InvalidState, OperationTimeout, Unsupported
from vmctl.interface import Machine
from vmctl.types import Capabilities, DiskUsage, MachineSpec, Snapshot, State, Usage, validate_name

from . import _qmp
from ._screenshot import screendump
from ._sequences import (
    RUNSTATES,
    cont_after_reset,
    disk_snapshots,
    graceful_reboot,
    load_state,
    save_state,
    snapshot_tag,
)

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

__all__ = ["AdoptedQemuMachine", "adopt"]

log = logging.getLogger("vmctl.qemu")

_RUNSTATES = {**RUNSTATES, "shutdown": State.STOPPED}  # -no-shutdown: the guest powered off, QEMU stays
_NO_DISK = "the adopted QEMU has no writable qcow2 disk"
SAVED_STATE = "state.bin"
PARTIAL_STATE = SAVED_STATE + ".tmp"


def peer_pid(socket_path: Path) -> int | None:
    """The pid of the process listening on the UNIX socket ``socket_path`` (SO_PEERCRED), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            with _qmp._reachable(socket_path) as address:
                sock.connect(address)
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int = struct.unpack("3i", creds)[0]
        return pid or None


def _process_identity(pid: int | None) -> dict[str, Any]:
    if pid is None:
        return {"pid": None, "pid_started": None}
    try:
        return {"pid": pid, "pid_started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": None, "pid_started": None}


def live_pid(adopted: dict[str, Any]) -> int | None:
    pid = adopted.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(adopted.get("pid_started") or 0)) > 0.01:
            return None  # the pid was reused
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return pid


def _options(argv: list[str]) -> Iterator[tuple[str, str]]:
    """(option, value) pairs of a QEMU command line (``-opt value``; ``--opt`` as ``-opt``)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("-") and i + 1 < len(argv):
            yield "-" + arg.lstrip("-"), argv[i + 1]


def _keyvals(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        out[key] = val if sep else ""
    return out


def _spec_from_command(name: str, argv: list[str], cwd: Path) -> dict[str, Any]:
    """The parts of a spec only QEMU's command line tells: kernel boot, serial log, 9p shares."""
    data: dict[str, Any] = {}
    chardev_files: dict[str, str] = {}
    serial = None
    for opt, value in _options(argv):
        if opt in ("-kernel", "-initrd"):
            data[opt[1:]] = str(cwd / value)
        elif opt == "-append":
            data["cmdline"] = value
        elif opt == "-chardev" and value.startswith("file,"):
            kv = _keyvals(value)
            if kv.get("id") and kv.get("path"):
                chardev_files[kv["id"]] = kv["path"]
        elif opt == "-serial" and serial is None:
            serial = value
        elif opt == "-virtfs":
            kv = _keyvals(value)
            tag, path = kv.get("mount_tag"), kv.get("path")
            if tag and path:
                data.setdefault("shared_dirs", {})[tag] = str(cwd / path)
                if kv.get("readonly", "off") in ("on", "true", "yes", ""):
                    data.setdefault("readonly_shares", []).append(tag)
    if serial is not None:
        if serial.startswith("file:"):
            data["serial_log"] = str(cwd / serial[5:])
        elif serial.startswith("chardev:") and serial[8:] in chardev_files:
            data["serial_log"] = str(cwd / chardev_files[serial[8:]])
    if "kernel" not in data:
        data.pop("initrd", None)
        data.pop("cmdline", None)
    return data


def _writable_disk(s: _qmp.QmpSession) -> dict[str, Any] | None:
    """query-block's image of the first writable, non-removable drive (its file and format)."""
    for dev in s.execute("query-block"):
        inserted = dev.get("inserted")
        if not inserted or dev.get("removable") or inserted.get("ro"):
            continue
        image = inserted.get("image", {})
        return {
            "node": inserted.get("node-name"),
            "file": image.get("filename") or inserted.get("file"),
            "format": image.get("format") or inserted.get("drv"),
            "backing": image.get("full-backing-filename") or image.get("backing-filename"),
            "backing_format": image.get("backing-filename-format"),
        }
    return None


def _nics(s: _qmp.QmpSession) -> list[str]:
    try:
        return [str(nic["name"]) for nic in s.execute("query-rx-filter")]
    except BackendError:
        return []


def adopt(hv: QemuHypervisor, name: str, qmp: str | os.PathLike[str]) -> AdoptedQemuMachine:
    """Record the QEMU answering on the QMP socket ``qmp`` as machine ``name``."""
    validate_name(name)
    socket_path = Path(qmp).expanduser().absolute()
    try:
        if not stat.S_ISSOCK(socket_path.stat().st_mode):
            raise InvalidSpec("qmp", f"{socket_path} is not a UNIX socket")
    except FileNotFoundError:
        raise InvalidSpec("qmp", f"{socket_path} does not exist") from None
    deadline = time.monotonic() + 5  # a QEMU just started binds its socket before it listens
    while (pid := peer_pid(socket_path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid is None:
        raise InvalidSpec("qmp", f"no process listens on {socket_path}")
    try:
        proc = psutil.Process(pid)
        argv, cwd = proc.cmdline(), Path(proc.cwd())
    except (psutil.Error, OSError) as exc:
        raise BackendError(f"cannot read the command line of QEMU (pid {pid}): {exc}") from exc
    with _qmp.session(socket_path, 10) as s:
        s.execute("query-status")  # a QMP monitor, not any socket
        memory = int(s.execute("query-memory-size-summary")["base-memory"])
        cpus = len(s.execute("query-cpus-fast"))
        disk = _writable_disk(s)
        nics = _nics(s)
    data = _spec_from_command(name, argv, cwd)
    data.update(name=name, memory_mib=max(1, memory >> 20), cpus=max(1, cpus))
    if disk is not None and disk["file"]:
        if disk["backing"]:
            data["disk"], data["overlay"] = disk["backing"], True
        else:
            data["disk"], data["overlay"] = disk["file"], False
    if nics or any(opt in ("-nic", "-netdev", "-net") for opt, _ in _options(argv)):
        data["network"] = {"port_forwards": []}
    spec = spec_from_record(data, adopted=True)
    record = {
        "adopted": {
            "qmp": str(socket_path),
            "argv": argv,
            "cwd": str(cwd),
            "disk": disk["file"] if disk else None,
            "disk_format": disk["format"] if disk else None,
            "nics": nics,
            **_process_identity(pid),
        },
        "spec": spec.to_dict(),
        "created": time.time(),
        "notes": {},
    }
    with hv.store.creating(name) as directory:
        (directory / "machine.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    log.info("%s: adopted QEMU pid %d (QMP %s)", name, pid, socket_path)
    return AdoptedQemuMachine(hv, name)


class AdoptedQemuMachine(Machine):
    """A QEMU started elsewhere, driven through its QMP socket."""

    hypervisor: QemuHypervisor

    def __init__(self, hypervisor: QemuHypervisor, name: str) -> None:
        super().__init__(hypervisor, name)
        self.dir = hypervisor.store.path(name)

    def _record(self) -> dict[str, Any]:
        return self.hypervisor.store.read(self.name)

    def _adopted(self) -> dict[str, Any]:
        adopted: dict[str, Any] = self._record()["adopted"]
        return adopted

    @property
    def _socket(self) -> Path:
        return Path(self._adopted()["qmp"])

    @property
    def managed(self) -> bool:
        return False

    @property
    def spec(self) -> MachineSpec:
        return spec_from_record(self._record()["spec"], adopted=True)

    @property
    def capabilities(self) -> Capabilities:
        caps = self.hypervisor.capabilities.without("cpu_limit")  # a QEMU vmctl did not start
        if self._adopted().get("disk_format") != "qcow2":
            caps = caps.without("snapshots", "live_snapshots")
        return caps

    def _why(self, capability: str) -> str:
        return _NO_DISK if capability == "snapshots" else ""

    def _exclusive(self, verb: str, timeout: float) -> contextlib.AbstractContextManager[Any]:
        return self.hypervisor.store.locked(self.name, timeout)

    def _monitor(self, timeout: float = 10) -> contextlib.AbstractContextManager[_qmp.QmpSession]:
        return _qmp.session(self._socket, timeout)

    # -- state --------------------------------------------------------------------------------
    def _get_pid(self) -> int | None:
        """The recorded QEMU process, if it still runs (the same process: its start time too)."""
        return live_pid(self._adopted())

    def _note_pid(self) -> None:
        """Record the process now listening on the socket (after a launch it may have forked:
        -daemonize), so that reading the state needs no extra connection to the monitor."""
        rec = self._record()
        rec["adopted"].update(_process_identity(peer_pid(self._socket)))
        self.hypervisor.store.write(self.name, rec)

    def _get_state(self) -> State:
        if self._get_pid() is None:
            return State.SUSPENDED if (self.dir / SAVED_STATE).exists() else State.STOPPED
        try:
            with self._monitor(10) as s:
                status = s.execute("query-status", timeout=10)["status"]
        except _qmp.MonitorLost:
            return State.STOPPED if self._get_pid() is None else State.UNKNOWN
        except (BackendError, OperationTimeout):
            return State.UNKNOWN
        return _RUNSTATES.get(status, State.UNKNOWN)

    def _wait_gone(self, pid: int | None, timeout: float) -> None:
        if pid is None:
            return
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise OperationTimeout(f"{self.name}: QEMU (pid {pid}) to exit", timeout) from None

    # -- verbs --------------------------------------------------------------------------------
    def _launch(self, timeout: float, extra: list[str] | None = None) -> None:
        """Run the recorded command line (plus ``extra``) and wait for QMP; continue a QEMU
        started paused (-S) unless ``extra`` is there (a snapshot or a state to load first)."""
        adopted = self._adopted()
        argv = list(adopted["argv"]) + (extra or [])
        log_file = self.dir / "qemu.log"
        with open(log_file, "ab") as err:
            try:
                proc = subprocess.Popen(  # the command line the adopted QEMU ran with
                    argv,
                    cwd=adopted["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise BackendError(f"{self.name}: cannot run {argv[0]}: {exc}", command=argv[0]) from exc
        threading.Thread(target=proc.wait, name=f"vmctl-qemu-reaper-{proc.pid}", daemon=True).start()
        deadline = time.monotonic() + timeout
        pauses = _qmp.backoff(0.01, 0.1)
        while True:
            if peer_pid(self._socket) is not None:
                self._note_pid()
                with contextlib.suppress(_qmp.MonitorLost, OperationTimeout):
                    with self._monitor(5) as s:
                        if s.execute("query-status")["status"] in ("prelaunch", "paused") and not extra:
                            s.execute("cont")
                        return
            code = proc.poll()
            if code not in (None, 0):  # 0: it may have daemonized itself (-daemonize)
                tail = self._log_tail()
                raise BackendError(f"{self.name}: QEMU exited with status {code}: {tail}", command=argv[0])
            if time.monotonic() > deadline:
                raise OperationTimeout(f"{self.name}: QEMU's QMP socket to answer", timeout)
            time.sleep(next(pauses))

    def _log_tail(self) -> str:
        """The end of the log of the QEMU vmctl ran again (bounded: the log may be large)."""
        try:
            with open(self.dir / "qemu.log", "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
                return f.read(2000).decode(errors="replace")
        except OSError:
            return ""

    def _do_start(self, timeout: float) -> None:
        pid = self._get_pid()
        if pid is not None:  # guest-panicked, or powered off under -no-shutdown: a fresh QEMU
            with contextlib.suppress(_qmp.MonitorLost):
                with self._monitor(timeout) as s:
                    s.execute("quit")
            self._wait_gone(pid, timeout)
            (self.dir / SAVED_STATE).unlink(missing_ok=True)  # CRASHED boots afresh
        if (self.dir / SAVED_STATE).exists():
            self._restore(timeout)
        else:
            self._launch(timeout)

    def _restore(self, timeout: float) -> None:
        """Run the command line waiting for an incoming migration and load the saved state."""
        saved = self.dir / SAVED_STATE
        deadline = time.monotonic() + timeout
        self._launch(timeout, ["-incoming", "defer"])
        try:
            with open(saved, "rb") as f, self._monitor() as s:
                status = load_state(s, f, self.name, deadline, timeout, self._log_tail)
                saved.unlink()
                if status != "running":
                    s.execute("cont")
        except BaseException:
            self._do_poweroff(10, keep_saved=True)  # the saved state stays: start may try again
            raise

    def _do_suspend(self, timeout: float) -> None:
        tmp = self.dir / PARTIAL_STATE
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with self._monitor(timeout) as s:
                save_state(s, fd, self.name, timeout)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.dir / SAVED_STATE)
        self._do_poweroff(timeout, keep_saved=True)

    def _do_pause(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("stop", timeout=timeout)

    def _do_resume(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("cont", timeout=timeout)

    def _do_request_shutdown(self) -> None:
        with self._monitor() as s:
            s.execute("system_powerdown")

    def _do_poweroff(self, timeout: float, keep_saved: bool = False) -> None:
        if not keep_saved:
            (self.dir / SAVED_STATE).unlink(missing_ok=True)
        pid = self._get_pid()
        if pid is None:
            return
        with contextlib.suppress(_qmp.MonitorLost):
            with self._monitor(timeout) as s:
                s.execute("quit")
        self._wait_gone(pid, timeout)

    def _do_reset(self, timeout: float) -> None:
        with self._monitor(timeout) as s:
            s.execute("system_reset")
            cont_after_reset(s, timeout)

    def _do_reboot(self, timeout: float) -> bool:
        # as vmctl's own machines: keep QEMU in "shutdown" when the guest powers off, then reset
        deadline = time.monotonic() + timeout
        with self._monitor(timeout) as s:
            return graceful_reboot(s, deadline)

    # -- snapshots ----------------------------------------------------------------------------
    def _disk(self) -> Path:
        adopted = self._adopted()
        if not adopted.get("disk") or adopted.get("disk_format") != "qcow2":
            raise Unsupported("qemu", "snapshots", _NO_DISK)
        return Path(adopted["disk"])

    def _node(self, s: _qmp.QmpSession) -> str:
        disk = _writable_disk(s)
        if disk is None or not disk["node"]:
            raise BackendError(f"{self.name}: the running QEMU has no writable disk node")
        return str(disk["node"])

    def _job(self, command: str, tag: str, timeout: float, vmstate: bool = True) -> None:
        job = f"{command}-{uuid.uuid4().hex[:8]}"
        with self._monitor(timeout) as s:
            node = self._node(s)
            args: dict[str, Any] = {"job-id": job, "tag": tag, "devices": [node]}
            if vmstate:
                args["vmstate"] = node
            s.execute(command, args, timeout=timeout)
            s.wait_job(job, timeout)
            if command == "snapshot-load" and s.execute("query-status")["status"] != "running":
                s.execute("cont")

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        disk = self._disk()
        if self._get_pid() is None:
            run_tool([self.hypervisor.qemu_img, "snapshot", "-c", snapshot_tag(name), str(disk)], timeout=timeout)
        else:
            self._job("snapshot-save", snapshot_tag(name), timeout)
        self._set_note(name, description)
        return self._find_snapshot(name)

    def _set_note(self, name: str, description: str | None) -> None:
        rec = self._record()
        notes = dict(rec.get("notes", {}))
        if description is None:
            notes.pop(name, None)
        else:
            notes[name] = description
        self.hypervisor.store.update(self.name, notes=notes)

    def _do_snapshots(self) -> list[Snapshot]:
        disk = self._disk()
        return disk_snapshots(self.hypervisor.qemu_img, disk, self._record().get("notes", {}))

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        disk = self._disk()
        (self.dir / SAVED_STATE).unlink(missing_ok=True)
        alive = self._get_pid() is not None
        if snapshot.has_memory and alive:
            self._job("snapshot-load", snapshot_tag(snapshot.name), timeout)
            return
        if alive:
            self._do_poweroff(timeout)
        if snapshot.has_memory:
            self._launch(timeout, ["-loadvm", snapshot_tag(snapshot.name)])
        else:
            run_tool(
                [self.hypervisor.qemu_img, "snapshot", "-a", snapshot_tag(snapshot.name), str(disk)], timeout=timeout
            )

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        disk = self._disk()
        if self._get_pid() is not None:
            self._job("snapshot-delete", snapshot_tag(name), timeout, vmstate=False)
        else:
            run_tool([self.hypervisor.qemu_img, "snapshot", "-d", snapshot_tag(name), str(disk)], timeout=timeout)
        self._set_note(name, None)

    # -- usage, network, destroy --------------------------------------------------------------
    def _do_usage(self) -> Usage:
        pid = self._get_pid()
        if pid is None:
            return Usage(machine=self.name)
        read = write = None
        with contextlib.suppress(BackendError, OperationTimeout):
            with self._monitor(5) as s:
                stats = s.execute("query-blockstats", timeout=5)
                read = sum(int(d["stats"]["rd_bytes"]) for d in stats)
                write = sum(int(d["stats"]["wr_bytes"]) for d in stats)
        return usage_of_process(self.name, pid, disk_read_bytes=read, disk_write_bytes=write)

    def _do_disk_usage(self) -> DiskUsage:
        """What vmctl keeps for the machine: its record directory (and a suspended machine's saved
        state there); the adopted QEMU's own disk is its owner's, never counted."""
        return DiskUsage(self.name, allocated_bytes([self.dir]) or 0, (str(self.dir),))

    def _do_screenshot(self, timeout: float) -> bytes:
        return screendump(self._monitor, self.hypervisor.name, timeout)

    def _do_set_network(self, enabled: bool) -> None:
        with self._monitor() as s:
            nics = _nics(s) or list(self._adopted().get("nics", []))
            if not nics:
                raise InvalidState(self.name, "set_network (the running QEMU has no NIC QMP can name)", State.RUNNING)
            for nic in nics:
                s.execute("set_link", {"name": nic, "up": enabled})

    def _do_destroy(self, timeout: float) -> None:
        self._do_destroy_adopted(timeout, delete_disks=False)

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        disk = self._adopted().get("disk")
        self._do_poweroff(timeout)
        self.hypervisor.store.remove(self.name)
        if delete_disks and disk:
            path = Path(disk)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(path.lstat().st_mode):
                    log.info("%s: deleting disk %s (delete_disks=True)", self.name, path)
                    path.unlink()
                else:
                    log.warning("%s: disk %s is not a regular file: not deleted", self.name, path)
