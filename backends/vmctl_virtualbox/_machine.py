"""The VirtualBox machine: vmctl's lifecycle on top of a :class:`Transport`.

VirtualBox's states map to vmctl's as follows (``VMState`` short names of ``showvminfo
--machinereadable``):

=================================================  ==========================================
VirtualBox                                          vmctl
=================================================  ==========================================
poweroff, teleported                                STOPPED
saved, aborted-saved                                SUSPENDED (``start`` restores)
aborted, gurumeditation                             CRASHED (``start`` boots afresh)
running, livesnapshotting, teleporting,             RUNNING
deletingsnapshotlive
paused, deletingsnapshotlivepaused,                 PAUSED
teleportingpausedvm
starting, stopping, saving, restoring,              transitional: read again until it settles
onlinesnapshotting, snapshotting, restoringsnapshot,  (``settle_timeout``), else UNKNOWN
deletingsnapshot, settingup, teleportingin
=================================================  ==========================================

``aborted`` after a vmctl ``poweroff`` reads as STOPPED: VirtualBox offers no way to leave the
Aborted state but starting the machine, so vmctl records (in the machine's extradata) that the
crash was acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from vmctl.backend.diskuse import allocated_bytes
from vmctl.backend.locking import machine_lock
from vmctl.backend.logs import log_tail
from vmctl.backend.records import spec_from_record
from vmctl.backend.usage import usage_of_process
from vmctl.errors import (
    BackendError,
    InvalidSpec,
    InvalidState,
    OperationTimeout,
    SnapshotNotFound,
)
from vmctl.interface import Machine
from vmctl.types import DiskUsage, MachineSpec, Snapshot, State, Usage

from ._adopt import spec_from_info
from ._transport import SnapshotInfo, Transport, VMInfo

if TYPE_CHECKING:
    from ._hypervisor import VirtualBoxHypervisor

__all__ = ["ONLINE", "OSTYPE", "SPEC_KEY", "STATE_MAP", "TRANSITIONAL", "VirtualBoxMachine", "dump"]

log = logging.getLogger("vmctl.virtualbox")

SPEC_KEY = "vmctl/spec"
SNAPSHOT_KEY = "vmctl/snapshot/"
ABORT_ACK_KEY = "vmctl/aborted-ack"
#: beside the machines' folders in ``base_folder``: one lock file per machine
LOCK_DIR = ".vmctl-locks"
OSTYPE = "Linux_64"

STATE_MAP: dict[str, State] = {
    "poweroff": State.STOPPED,
    "teleported": State.STOPPED,
    "saved": State.SUSPENDED,
    "aborted-saved": State.SUSPENDED,
    "aborted": State.CRASHED,
    "gurumeditation": State.CRASHED,
    "running": State.RUNNING,
    "livesnapshotting": State.RUNNING,
    "teleporting": State.RUNNING,
    "deletingsnapshotlive": State.RUNNING,
    "paused": State.PAUSED,
    "deletingsnapshotlivepaused": State.PAUSED,
    "teleportingpausedvm": State.PAUSED,
}
TRANSITIONAL = frozenset(
    {
        "starting",
        "stopping",
        "saving",
        "restoring",
        "onlinesnapshotting",
        "snapshotting",
        "restoringsnapshot",
        "deletingsnapshot",
        "settingup",
        "teleportingin",
    }
)
#: States in which a VM process exists.
ONLINE = frozenset(
    {
        "running",
        "paused",
        "gurumeditation",
        "livesnapshotting",
        "teleporting",
        "deletingsnapshotlive",
        "deletingsnapshotlivepaused",
        "teleportingpausedvm",
        "starting",
        "stopping",
        "saving",
        "restoring",
        "onlinesnapshotting",
        "teleportingin",
    }
)


def dump(value: object) -> str:
    """Compact one-line JSON: VBoxManage prints extradata values on one line."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class VirtualBoxMachine(Machine):
    """A VirtualBox VM: vmctl's (its spec kept in the VM's extradata) or adopted (any other VM)."""

    hypervisor: VirtualBoxHypervisor

    def __init__(self, hypervisor: VirtualBoxHypervisor, name: str) -> None:
        super().__init__(hypervisor, name)
        self._spec: MachineSpec | None = None

    @property
    def transport(self) -> Transport:
        return self.hypervisor.transport

    def _exclusive(self, verb: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """A lock file beside the machines' folders: VirtualBox's own session lock is held only
        while one VBoxManage command runs, so it cannot cover vmctl's check and action."""
        return machine_lock(self.hypervisor.base_folder / LOCK_DIR, self.name, verb, timeout)

    # -- reading ------------------------------------------------------------------------------
    @property
    def managed(self) -> bool:
        return self._spec is not None or self.transport.get_extradata(self.name, SPEC_KEY) is not None

    @property
    def spec(self) -> MachineSpec:
        if self._spec is None:
            raw = self.transport.get_extradata(self.name, SPEC_KEY)
            if raw is None:  # adopted: described by VirtualBox, read afresh each time
                return spec_from_info(self.info())
            try:
                recorded = json.loads(raw)
            except ValueError as exc:
                raise BackendError(f"the vmctl spec stored in VM {self.name!r} is unreadable: {exc}") from exc
            # The base image may have moved since: the spec is read back without requiring it.
            self._spec = spec_from_record(recorded)
        return self._spec

    def info(self) -> VMInfo:
        """What VirtualBox says about the machine now (``showvminfo``)."""
        return self.transport.info(self.name)

    def _settled_info(self, timeout: float | None = None) -> VMInfo:
        """The machine's info once it is out of a transitional state (or at the deadline)."""
        info = self.info()
        if info.state not in TRANSITIONAL:
            return info
        deadline = time.monotonic() + (self.hypervisor.settle_timeout if timeout is None else timeout)
        delay = 0.05
        while info.state in TRANSITIONAL and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)
            info = self.info()
        if info.state in TRANSITIONAL:
            log.warning("%s: still %s after %.0f s", self.name, info.state, self.hypervisor.settle_timeout)
        return info

    def _map(self, info: VMInfo) -> State:
        if info.state in TRANSITIONAL:
            return State.UNKNOWN
        state = STATE_MAP.get(info.state, State.UNKNOWN)
        if state is State.UNKNOWN:
            log.warning("%s: unknown VirtualBox state %r", self.name, info.state)
        if info.state == "aborted" and info.state_changed:
            if self.transport.get_extradata(self.name, ABORT_ACK_KEY) == info.state_changed:
                return State.STOPPED
        return state

    def _get_state(self) -> State:
        return self._map(self._settled_info())

    def _get_pid(self) -> int | None:
        info = self.info()
        if info.state not in ONLINE:
            return None
        pid = self.transport.vm_pid(self.name, info)
        if not pid:
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.AccessDenied:
                return pid
        except psutil.NoSuchProcess:
            return None
        # A stale log could name a recycled pid: the VM process names its machine's UUID.
        return pid if not info.uuid or info.uuid in cmdline.lower() else None

    def _get_remote_desktop_address(self) -> str | None:
        # The port VRDE's server bound at this start, within the range given at create.
        port = self.transport.remote_desktop_port(self.name)
        if port == 0:
            raise BackendError(
                f"{self.name}: VirtualBox's VRDE server found no free port on 127.0.0.1 (vrdeport=0)",
                native="vrdeport=0",
            )
        return None if port is None else f"127.0.0.1:{port}"

    # -- helpers ------------------------------------------------------------------------------
    def _invalid(self, verb: str, exc: InvalidState) -> InvalidState:
        if exc.state is State.UNKNOWN:
            fresh = InvalidState(self.name, verb, self._get_state())
            fresh.__cause__ = exc
            return fresh
        return exc

    def _wait(self, state: State, timeout: float) -> None:
        self.wait_for(state, max(timeout, 1.0))

    # -- verbs --------------------------------------------------------------------------------
    def _do_start(self, timeout: float) -> None:
        try:
            self.transport.start(self.name, timeout)
        except InvalidState as exc:
            raise self._invalid("start", exc) from None
        self._wait(State.RUNNING, timeout)

    def _control(self, verb: str, action: str, *args: str, timeout: float = 60) -> None:
        try:
            self.transport.control(self.name, action, *args, timeout=max(timeout, 1.0))
        except InvalidState as exc:
            raise self._invalid(verb, exc) from None

    def _do_pause(self, timeout: float) -> None:
        self._control("pause", "pause", timeout=timeout)
        self._wait(State.PAUSED, timeout)

    def _do_resume(self, timeout: float) -> None:
        self._control("resume", "resume", timeout=timeout)
        self._wait(State.RUNNING, timeout)

    def _do_suspend(self, timeout: float) -> None:
        self._control("suspend", "savestate", timeout=timeout)
        self._wait(State.SUSPENDED, timeout)

    def _do_request_shutdown(self) -> None:
        self._control("stop", "acpipowerbutton")

    def _do_poweroff(self, timeout: float) -> None:
        info = self._settled_info(min(timeout, self.hypervisor.settle_timeout))
        if info.state in ("saved", "aborted-saved"):
            self.transport.discard_state(self.name)
        elif info.state == "aborted":
            self.transport.set_extradata(self.name, ABORT_ACK_KEY, info.state_changed)
        elif info.state in ONLINE:
            try:
                self._control("poweroff", "poweroff", timeout=timeout)
            except InvalidState:
                if self._get_state() is not State.STOPPED:
                    raise
        self._wait(State.STOPPED, timeout)

    def _do_reset(self, timeout: float) -> None:
        if self._get_state() is State.STOPPED:
            # The guest finished a late shutdown after the reboot deadline: boot it.
            self._do_start(timeout)
            return
        self._control("restart", "reset", timeout=timeout)
        self._wait(State.RUNNING, timeout)

    def _do_reboot(self, timeout: float) -> bool:
        """VirtualBox has no ACPI reboot: the guest shuts down on the power button, then boots."""
        self._do_request_shutdown()
        try:
            self.wait_for(State.STOPPED, timeout)
        except OperationTimeout:
            return False
        self._do_start(timeout)
        return True

    def _snapshot_infos(self) -> list[tuple[Snapshot, SnapshotInfo]]:
        infos = self.transport.snapshot_list(self.name)
        if not infos:
            return []
        meta: dict[str, dict[str, Any]] = {}
        for key, value in self.transport.extradata(self.name).items():
            if key.startswith(SNAPSHOT_KEY):
                try:
                    meta[key[len(SNAPSHOT_KEY) :].lower()] = json.loads(value)
                except ValueError:
                    continue
        by_uuid = {i.uuid: i for i in infos}
        result = []
        for i in infos:
            m = meta.get(i.uuid, {})
            created = m.get("created", i.created)
            has_memory = m.get("has_memory", i.online)
            parent = by_uuid[i.parent_uuid].name if i.parent_uuid in by_uuid else None
            snap = Snapshot(
                name=i.name,
                created=float(created) if created is not None else 0.0,
                has_memory=bool(has_memory),
                description=i.description,
                parent=parent,
            )
            result.append((snap, i))
        if all(s.created for s, _ in result):
            result.sort(key=lambda p: (p[0].created, p[1].order))
        return result

    def _do_snapshots(self) -> list[Snapshot]:
        return [s for s, _ in self._snapshot_infos()]

    def _find(self, name: str) -> SnapshotInfo:
        for snap, info in self._snapshot_infos():
            if snap.name == name:
                return info
        raise SnapshotNotFound(self.name, name)

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        state = self._get_state()
        live = state in (State.RUNNING, State.PAUSED)
        current = [i for i in self.transport.snapshot_list(self.name) if i.current]
        try:
            uuid = self.transport.snapshot_take(self.name, name, description, timeout)
        except InvalidState as exc:
            raise self._invalid("snapshot", exc) from None
        created = time.time()
        self.transport.set_extradata(self.name, SNAPSHOT_KEY + uuid, dump({"created": created, "has_memory": live}))
        return Snapshot(
            name=name,
            created=created,
            has_memory=live,
            description=description,
            parent=current[0].name if current else None,
        )

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        target = self._find(snapshot.name)
        if self._get_state() in (State.RUNNING, State.PAUSED):
            self._do_poweroff(timeout)
        try:
            self.transport.snapshot_restore(self.name, target.uuid, timeout)
        except InvalidState as exc:
            raise self._invalid("revert", exc) from None
        info = self._settled_info()
        if info.state in ("saved", "aborted-saved"):
            # An online snapshot restores to the Saved state; starting resumes its guest.
            self._do_start(timeout)
        else:
            self._wait(State.STOPPED, timeout)

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        target = self._find(name)
        try:
            self.transport.snapshot_delete(self.name, target.uuid, timeout)
        except InvalidState as exc:
            raise self._invalid("delete_snapshot", exc) from None
        self.transport.set_extradata(self.name, SNAPSHOT_KEY + target.uuid, None)

    def _do_disk_usage(self) -> DiskUsage:
        # settings, Logs/, Snapshots/ (differencing images, saved states): the machine folder
        folder = Path(self.info().cfg_file).parent
        return DiskUsage(self.name, allocated_bytes([folder]) or 0, (str(folder),))

    def _do_usage(self) -> Usage:
        info = self._settled_info()
        if self._map(info) not in (State.RUNNING, State.PAUSED):
            return Usage(machine=self.name)
        pid = self._get_pid()
        if pid:
            return usage_of_process(self.name, pid)
        # No process to look at (e.g. VirtualBox runs it as another user): VirtualBox's metrics.
        try:
            metrics = self.transport.metrics(self.name)
        except BackendError as exc:
            log.debug("%s: metrics unavailable: %s", self.name, exc)
            return Usage(machine=self.name)
        ram = metrics.get("RAM/Usage/Used")
        return Usage(machine=self.name, memory_bytes=int(ram[0] * 1024) if ram and ram[1] == "kB" else None)

    def hypervisor_log(self, max_bytes: int = 4000) -> str:
        """The end of VirtualBox's log of this VM (``VBox.log`` in its log folder), or ""."""
        folder = self.info().log_folder
        return log_tail(Path(folder) / "VBox.log", max_bytes) if folder else ""

    def _do_screenshot(self, timeout: float) -> bytes:
        try:
            return self.transport.screenshot_png(self.name, max(timeout, 1.0))
        except InvalidState as exc:
            raise self._invalid("screenshot", exc) from None

    def _do_set_network(self, enabled: bool) -> None:
        self._control("set_network", "setlinkstate1", "on" if enabled else "off")

    def _do_set_cpu_limit(self, percent: int) -> None:
        if self._get_state() in (State.RUNNING, State.PAUSED):
            # Like VBoxManage itself, this changes the running machine only, until it powers off.
            self._control("set_cpu_limit", "cpuexecutioncap", str(percent))
        else:
            self.transport.set_cpu_cap_offline(self.name, percent)

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        """Unregister a VM vmctl did not create: its folder, settings and disks stay unless
        ``delete_disks`` (then ``unregistervm --delete``, as VirtualBox deletes a VM)."""
        info = self._settled_info()
        if info.state in ONLINE:
            self._do_poweroff(timeout)
        elif info.state in ("saved", "aborted-saved"):
            self.transport.discard_state(self.name)
        if delete_disks:
            self.transport.unregister_delete(self.name, timeout)
        else:
            self.transport.unregister(self.name, timeout)

    def _do_destroy(self, timeout: float) -> None:
        info = self._settled_info()
        try:
            spec: MachineSpec | None = self.spec
        except (InvalidSpec, BackendError) as exc:
            log.warning("%s: stored spec unreadable (%s); destroying anyway", self.name, exc)
            spec = None
        if info.state in ONLINE:
            self._do_poweroff(timeout)
        if spec is None or not spec.overlay:
            # unregistervm --delete deletes every attached disk: never let it reach a base image
            # the VM wrote to directly. Snapshots are merged into it first (that is what
            # overlay=False asked for), then it is detached.
            for snap, _ in reversed(self._snapshot_infos()):
                self._do_delete_snapshot(snap.name, timeout)
            if any(path for path in info.disks.values()):
                self.transport.detach_disk(self.name)
        self.transport.unregister_delete(self.name, timeout)
        folder = info.folder
        base = self.hypervisor.base_folder
        if folder.name == self.name and folder.parent == base and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
