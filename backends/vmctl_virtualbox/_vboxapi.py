"""The vboxapi transport: VirtualBox's Main API through the SDK's ``vboxapi`` Python bindings.

Written against the documented API (IVirtualBox, ISession, IMachine, IConsole, IProgress,
ISnapshot, IPerformanceCollector; VirtualBox 7.0/7.1) and imported only when used. It has NOT
been run against a real VirtualBox: VirtualBox cannot be installed on the machines vmctl is
developed on, and ``vboxapi`` is not on PyPI (it ships with the VirtualBox SDK and installs with
``python vboxapisetup.py install``). The VBoxManage transport is the tested one; ``transport=
"auto"`` picks this one only when ``vboxapi`` imports and reaches a running VirtualBox.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmctl.errors import (
    BackendError,
    ErrorCode,
    InvalidState,
    MachineNotFound,
    OperationTimeout,
    SnapshotNotFound,
    VmctlError,
)
from vmctl.types import Network, State

from ._errors import ERROR_CODES, code_name
from ._transport import SnapshotInfo, Transport, VMInfo

__all__ = ["VBoxApiTransport"]

log = logging.getLogger("vmctl.virtualbox")

CONTROLLER = "SATA"

#: IMachine.state values -> VBoxManage's short names (VBoxManageInfo.cpp machineStateToName).
_STATE_NAMES = {
    "PoweredOff": "poweroff",
    "Saved": "saved",
    "Teleported": "teleported",
    "Aborted": "aborted",
    "AbortedSaved": "aborted-saved",
    "Running": "running",
    "Paused": "paused",
    "Stuck": "gurumeditation",
    "Teleporting": "teleporting",
    "LiveSnapshotting": "livesnapshotting",
    "Starting": "starting",
    "Stopping": "stopping",
    "Saving": "saving",
    "Restoring": "restoring",
    "TeleportingPausedVM": "teleportingpausedvm",
    "TeleportingIn": "teleportingin",
    "DeletingSnapshotOnline": "deletingsnapshotlive",
    "DeletingSnapshotPaused": "deletingsnapshotlivepaused",
    "OnlineSnapshotting": "onlinesnapshotting",
    "RestoringSnapshot": "restoringsnapshot",
    "DeletingSnapshot": "deletingsnapshot",
    "SettingUp": "settingup",
    "Snapshotting": "snapshotting",
}


class VBoxApiTransport(Transport):
    name = "vboxapi"

    def __init__(self) -> None:
        import vboxapi  # the VirtualBox SDK's bindings; ImportError means "not installed"

        self.mgr = vboxapi.VirtualBoxManager(None, None)
        self.vbox = self.mgr.getVirtualBox()
        self.c = self.mgr.constants
        self._state_by_value = {}
        for name, short in _STATE_NAMES.items():
            value = getattr(self.c, f"MachineState_{name}", None)
            if value is not None:
                self._state_by_value[int(value)] = short
        self.vbox.version  # noqa: B018 - touching the API proves VirtualBox answers

    # -- plumbing -----------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str, vm: str | None = None, verb: str = "") -> VmctlError:
        hresult: int | None = None
        message = str(exc)
        with contextlib.suppress(Exception):
            if self.mgr.errIsOurXcptKind(exc):
                hresult = int(self.mgr.xcptGetResult(exc))
                message = str(self.mgr.xcptGetMessage(exc))
        code = code_name(hresult) if hresult is not None else None
        if code == "VBOX_E_OBJECT_NOT_FOUND" and vm is not None:
            if "snapshot" in message.lower():
                return SnapshotNotFound(vm, "?")
            return MachineNotFound(vm, "virtualbox")
        if code == "VBOX_E_INVALID_VM_STATE":
            return InvalidState(vm or "?", verb or what, State.UNKNOWN)
        return BackendError(
            f"VirtualBox API {what} failed: {message}",
            command=what,
            code=ERROR_CODES.get(code, ErrorCode.UNKNOWN) if code is not None else ErrorCode.UNKNOWN,
            native=code,
        )

    def _machine(self, vm: str) -> Any:
        try:
            return self.vbox.findMachine(vm)
        except Exception as exc:
            raise self._error(exc, "IVirtualBox.findMachine", vm) from exc

    @contextlib.contextmanager
    def _session(self, vm: str, write: bool = False, verb: str = "") -> Iterator[Any]:
        machine = self._machine(vm)
        session = self.mgr.getSessionObject()
        lock = self.c.LockType_Write if write else self.c.LockType_Shared
        try:
            machine.lockMachine(session, lock)
        except Exception as exc:
            raise self._error(exc, "IMachine.lockMachine", vm, verb) from exc
        try:
            yield session
        except VmctlError:
            raise
        except Exception as exc:
            raise self._error(exc, verb or "session call", vm, verb) from exc
        finally:
            with contextlib.suppress(Exception):
                session.unlockMachine()

    def _wait(self, progress: Any, timeout: float, what: str) -> None:
        progress.waitForCompletion(int(timeout * 1000))
        if not progress.completed:
            raise OperationTimeout(what, timeout)
        if int(progress.resultCode) != 0:
            text = ""
            with contextlib.suppress(Exception):
                text = progress.errorInfo.text
            code = code_name(int(progress.resultCode))
            raise BackendError(
                f"{what} failed: {text}", command=what, code=ERROR_CODES.get(code, ErrorCode.UNKNOWN), native=code
            )

    # -- Transport ----------------------------------------------------------------------------
    def version(self) -> str:
        return str(self.vbox.version)

    def list_vms(self) -> dict[str, str]:
        result = {}
        for m in self.mgr.getArray(self.vbox, "machines"):
            with contextlib.suppress(Exception):
                if m.accessible:
                    result[str(m.name)] = str(m.id).lower()
        return result

    def info(self, vm: str) -> VMInfo:
        m = self._machine(vm)
        try:
            state = self._state_by_value.get(int(m.state), "unknown")
            disks = {}
            for att in self.mgr.getArray(m, "mediumAttachments"):
                if att.medium is not None:
                    disks[f"{att.controller}-{att.port}-{att.device}"] = str(att.medium.location)
            nic = m.getNetworkAdapter(0)
            settings = str(m.settingsFilePath)
            return VMInfo(
                name=str(m.name),
                uuid=str(m.id).lower(),
                state=state,
                cfg_file=settings,
                log_folder=str(m.logFolder),
                snapshot_folder=str(m.snapshotFolder),
                state_file=str(m.stateFilePath) or None,
                state_changed=str(m.lastStateChange),
                cpu_cap=int(m.CPUExecutionCap),
                memory_mib=int(m.memorySize),
                cpus=int(m.CPUCount),
                cable_connected=bool(nic.cableConnected) if nic.enabled else None,
                disks=disks,
                raw={"sessionPID": str(m.sessionPID)},
            )
        except Exception as exc:
            raise self._error(exc, "IMachine attributes", vm) from exc

    def create_vm(self, name: str, base_folder: Path, ostype: str) -> str:
        try:
            settings = self.vbox.composeMachineFilename(name, "", "", str(base_folder))
            try:  # VirtualBox 7.1: createMachine(file, name, platformArchitecture, groups, os, flags, ...)
                machine = self.vbox.createMachine(
                    settings, name, self.c.PlatformArchitecture_x86, ["/"], ostype, "", "", "", ""
                )
            except (AttributeError, TypeError):  # VirtualBox 7.0: no platform argument
                machine = self.vbox.createMachine(settings, name, ["/"], ostype, "", "", "", "")
            machine.saveSettings()
            self.vbox.registerMachine(machine)
            return str(machine.id).lower()
        except Exception as exc:
            raise self._error(exc, "IVirtualBox.createMachine", name, "create") from exc

    def configure(
        self,
        vm: str,
        *,
        memory_mib: int,
        cpus: int,
        network: Network | None,
        serial_log: Path | None,
    ) -> None:
        with self._session(vm, write=True, verb="create") as s:
            m = s.machine
            m.memorySize = memory_mib
            m.CPUCount = cpus
            nic = m.getNetworkAdapter(0)
            if network is None:
                nic.enabled = False
            else:
                nic.enabled = True
                nic.attachmentType = self.c.NetworkAttachmentType_NAT
                nic.cableConnected = True
                if hasattr(nic.NATEngine, "localhostReachable"):  # VirtualBox 7; see _vboxmanage
                    nic.NATEngine.localhostReachable = False
                for pf in network.port_forwards:
                    proto = self.c.NATProtocol_TCP if pf.protocol == "tcp" else self.c.NATProtocol_UDP
                    nic.NATEngine.addRedirect(
                        f"{pf.protocol}{pf.host_port}", proto, pf.host_address, pf.host_port, "", pf.guest_port
                    )
            if serial_log is not None:
                port = m.getSerialPort(0)
                port.enabled = True
                if hasattr(port, "IOAddress"):
                    port.IOAddress = 0x3F8
                else:  # before 7.1 the attribute was IOBase
                    port.IOBase = 0x3F8
                port.IRQ = 4
                port.path = str(serial_log)
                port.hostMode = self.c.PortMode_RawFile
            m.saveSettings()

    def attach_disk(self, vm: str, path: Path, multiattach: bool) -> None:
        with self._session(vm, write=True, verb="create") as s:
            m = s.machine
            m.addStorageController(CONTROLLER, self.c.StorageBus_SATA).portCount = 1
            access = self.c.AccessMode_ReadOnly if multiattach else self.c.AccessMode_ReadWrite
            medium = self.vbox.openMedium(str(path), self.c.DeviceType_HardDisk, access, False)
            if multiattach and int(medium.type) != int(self.c.MediumType_MultiAttach):
                medium.type = self.c.MediumType_MultiAttach
            m.attachDevice(CONTROLLER, 0, 0, self.c.DeviceType_HardDisk, medium)
            m.saveSettings()

    def detach_disk(self, vm: str) -> None:
        with self._session(vm, write=True, verb="destroy") as s:
            s.machine.detachDevice(CONTROLLER, 0, 0)
            s.machine.saveSettings()

    def add_shared_folder(self, vm: str, tag: str, path: Path, *, readonly: bool = False) -> None:
        with self._session(vm, write=True, verb="create") as s:
            s.machine.createSharedFolder(tag, str(path), not readonly, False, "")
            s.machine.saveSettings()

    def get_extradata(self, vm: str, key: str) -> str | None:
        try:
            value = str(self._machine(vm).getExtraData(key))
        except VmctlError:
            raise
        except Exception as exc:
            raise self._error(exc, "IMachine.getExtraData", vm) from exc
        return value or None

    def set_extradata(self, vm: str, key: str, value: str | None) -> None:
        try:
            self._machine(vm).setExtraData(key, value or "")
        except VmctlError:
            raise
        except Exception as exc:
            raise self._error(exc, "IMachine.setExtraData", vm) from exc

    def extradata(self, vm: str) -> dict[str, str]:
        m = self._machine(vm)
        try:
            return {str(k): str(m.getExtraData(k)) for k in m.getExtraDataKeys()}
        except Exception as exc:
            raise self._error(exc, "IMachine.getExtraDataKeys", vm) from exc

    def start(self, vm: str, timeout: float) -> None:
        m = self._machine(vm)
        session = self.mgr.getSessionObject()
        try:
            progress = m.launchVMProcess(session, "headless", [])
            self._wait(progress, timeout, "IMachine.launchVMProcess")
        except VmctlError:
            raise
        except Exception as exc:
            raise self._error(exc, "IMachine.launchVMProcess", vm, "start") from exc
        finally:
            with contextlib.suppress(Exception):
                session.unlockMachine()

    def control(self, vm: str, action: str, *args: str, timeout: float = 60) -> None:
        with self._session(vm, verb=action) as s:
            console = s.console
            if console is None:
                raise InvalidState(vm, action, State.UNKNOWN)
            if action == "pause":
                console.pause()
            elif action == "resume":
                console.resume()
            elif action == "reset":
                console.reset()
            elif action == "acpipowerbutton":
                console.powerButton()
            elif action == "poweroff":
                self._wait(console.powerDown(), timeout, "IConsole.powerDown")
            elif action == "savestate":
                machine = s.machine
                if int(machine.state) == int(self.c.MachineState_Running):
                    console.pause()
                self._wait(machine.saveState(), timeout, "IMachine.saveState")
            elif action == "setlinkstate1":
                s.machine.getNetworkAdapter(0).cableConnected = args[0] == "on"
                s.machine.saveSettings()
            elif action == "cpuexecutioncap":
                s.machine.CPUExecutionCap = int(args[0])
            else:
                raise BackendError(f"unknown control action {action!r}", command=action)

    def discard_state(self, vm: str) -> None:
        with self._session(vm, write=True, verb="poweroff") as s:
            s.machine.discardSavedState(True)

    def set_cpu_cap_offline(self, vm: str, percent: int) -> None:
        with self._session(vm, write=True, verb="set_cpu_limit") as s:
            s.machine.CPUExecutionCap = percent
            s.machine.saveSettings()

    def snapshot_take(self, vm: str, name: str, description: str, timeout: float) -> str:
        with self._session(vm, verb="snapshot") as s:
            progress, snapshot_id = s.machine.takeSnapshot(name, description, True)
            self._wait(progress, timeout, "IMachine.takeSnapshot")
            return str(snapshot_id).lower()

    def snapshot_list(self, vm: str) -> list[SnapshotInfo]:
        m = self._machine(vm)
        try:
            if int(m.snapshotCount) == 0:
                return []
            root = m.findSnapshot("")
            current = m.currentSnapshot
            current_id = str(current.id).lower() if current is not None else ""
            result: list[SnapshotInfo] = []

            def walk(snap: Any, parent: str | None) -> None:
                sid = str(snap.id).lower()
                result.append(
                    SnapshotInfo(
                        name=str(snap.name),
                        uuid=sid,
                        description=str(snap.description),
                        parent_uuid=parent,
                        order=len(result),
                        current=sid == current_id,
                        online=bool(snap.online),
                        created=int(snap.timeStamp) / 1000.0,
                    )
                )
                for child in self.mgr.getArray(snap, "children"):
                    walk(child, sid)

            walk(root, None)
            return result
        except Exception as exc:
            raise self._error(exc, "ISnapshot tree", vm, "snapshots") from exc

    def snapshot_restore(self, vm: str, snapshot_uuid: str, timeout: float) -> None:
        with self._session(vm, write=True, verb="revert") as s:
            snap = s.machine.findSnapshot(snapshot_uuid)
            self._wait(s.machine.restoreSnapshot(snap), timeout, "IMachine.restoreSnapshot")

    def snapshot_delete(self, vm: str, snapshot_uuid: str, timeout: float) -> None:
        with self._session(vm, verb="delete_snapshot") as s:
            self._wait(s.machine.deleteSnapshot(snapshot_uuid), timeout, "IMachine.deleteSnapshot")

    def unregister_delete(self, vm: str, timeout: float) -> None:
        m = self._machine(vm)
        try:
            media = m.unregister(self.c.CleanupMode_DetachAllReturnHardDisksOnly)
            self._wait(m.deleteConfig(media), timeout, "IMachine.deleteConfig")
        except VmctlError:
            raise
        except Exception as exc:
            raise self._error(exc, "IMachine.unregister", vm, "destroy") from exc

    def vm_pid(self, vm: str, info: VMInfo) -> int | None:
        try:
            pid = int(info.raw.get("sessionPID", "0") or 0)
        except ValueError:
            return None
        return pid if pid > 0 and pid != os.getpid() else None

    def metrics(self, vm: str) -> dict[str, tuple[float, str]]:
        m = self._machine(vm)
        try:
            pc = self.vbox.performanceCollector
            pc.setupMetrics(["CPU/Load", "RAM/Usage"], [m], 1, 1)
            names, _objs, units, scales, _seq, indices, lengths, data = pc.queryMetricsData(
                ["CPU/Load/User", "CPU/Load/Kernel", "RAM/Usage/Used"], [m]
            )
        except Exception as exc:
            raise self._error(exc, "IPerformanceCollector.queryMetricsData", vm) from exc
        result = {}
        for i, metric in enumerate(names):
            if int(lengths[i]) == 0:
                continue
            value = float(data[int(indices[i]) + int(lengths[i]) - 1]) / max(1, int(scales[i]))
            result[str(metric)] = (value, str(units[i]))
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            del self.vbox
            del self.mgr
