"""What the VirtualBox machine logic needs from a way of talking to VirtualBox.

Two implementations: :mod:`._vboxmanage` (the ``VBoxManage`` command line) and :mod:`._vboxapi`
(the SDK's ``vboxapi`` Python bindings). Both speak VirtualBox's own vocabulary (``VMState``
short names such as ``poweroff``/``saved``/``running``, snapshot UUIDs, extradata) and raise
vmctl errors; :mod:`._machine` maps that vocabulary to vmctl's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.errors import Unsupported
from vmctl.types import Network

__all__ = ["SnapshotInfo", "Transport", "VMInfo"]


@dataclass(frozen=True)
class VMInfo:
    """A machine as VirtualBox describes it (the fields of ``showvminfo --machinereadable``)."""

    name: str
    uuid: str
    state: str
    """VirtualBox's short state name: poweroff, saved, aborted, running, paused, starting, ..."""
    cfg_file: str = ""
    log_folder: str = ""
    snapshot_folder: str = ""
    state_file: str | None = None
    state_changed: str = ""
    cpu_cap: int = 100
    memory_mib: int = 0
    cpus: int = 0
    cable_connected: bool | None = None
    disks: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.cfg_file).parent


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    uuid: str
    description: str
    parent_uuid: str | None
    order: int
    current: bool = False
    online: bool | None = None
    """True if the snapshot holds a running machine's memory; None if the transport cannot tell."""
    created: float | None = None


class Transport(ABC):
    """One way of driving VirtualBox. ``vm`` arguments are machine names (or UUIDs)."""

    name: str = "?"

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def list_vms(self) -> dict[str, str]:
        """Registered machines: {name: uuid}."""

    @abstractmethod
    def info(self, vm: str) -> VMInfo:
        """Raises MachineNotFound."""

    @abstractmethod
    def create_vm(self, name: str, base_folder: Path, ostype: str) -> str:
        """Create and register an empty machine; return its UUID."""

    @abstractmethod
    def configure(
        self,
        vm: str,
        *,
        memory_mib: int,
        cpus: int,
        network: Network | None,
        serial_log: Path | None,
    ) -> None: ...

    @abstractmethod
    def attach_disk(self, vm: str, path: Path, multiattach: bool) -> None:
        """Attach ``path`` as the boot disk; multiattach gives the VM its own differencing image."""

    @abstractmethod
    def detach_disk(self, vm: str) -> None: ...

    @abstractmethod
    def add_shared_folder(self, vm: str, tag: str, path: Path, *, readonly: bool = False) -> None: ...

    @abstractmethod
    def get_extradata(self, vm: str, key: str) -> str | None: ...

    @abstractmethod
    def set_extradata(self, vm: str, key: str, value: str | None) -> None: ...

    @abstractmethod
    def extradata(self, vm: str) -> dict[str, str]: ...

    @abstractmethod
    def start(self, vm: str, timeout: float) -> None:
        """Power up headless (restores a saved state). Returns once VirtualBox accepted it."""

    @abstractmethod
    def control(self, vm: str, action: str, *args: str, timeout: float = 60) -> None:
        """``pause``, ``resume``, ``reset``, ``poweroff``, ``savestate``, ``acpipowerbutton``,
        ``setlinkstate1 on|off``, ``cpuexecutioncap N``."""

    #: :meth:`screenshot_png` works (``Capabilities.screenshot``)
    screenshots: bool = False

    def remote_desktop_available(self) -> bool:
        """Whether :meth:`enable_remote_desktop` can give a VM a VRDE server (the extension pack)."""
        return False

    def enable_remote_desktop(self, vm: str) -> None:
        """Turn VRDE on for a powered-off VM: 127.0.0.1, a port range, no authentication."""
        raise Unsupported("virtualbox", "create", "this transport has no remote desktop (VRDE); VBoxManage has")

    def remote_desktop_port(self, vm: str) -> int | None:
        """The port the running VM's VRDE server bound; None when it is not started."""
        raise Unsupported("virtualbox", "remote_desktop_address", "this transport has no remote desktop (VRDE)")

    def screenshot_png(self, vm: str, timeout: float) -> bytes:
        """PNG bytes of the running or paused VM's first screen."""
        raise Unsupported("virtualbox", "screenshot", "this transport takes no screenshots; VBoxManage does")

    @abstractmethod
    def discard_state(self, vm: str) -> None: ...

    @abstractmethod
    def set_cpu_cap_offline(self, vm: str, percent: int) -> None: ...

    @abstractmethod
    def snapshot_take(self, vm: str, name: str, description: str, timeout: float) -> str:
        """Return the new snapshot's UUID."""

    @abstractmethod
    def snapshot_list(self, vm: str) -> list[SnapshotInfo]: ...

    @abstractmethod
    def snapshot_restore(self, vm: str, snapshot_uuid: str, timeout: float) -> None: ...

    @abstractmethod
    def snapshot_delete(self, vm: str, snapshot_uuid: str, timeout: float) -> None: ...

    @abstractmethod
    def unregister_delete(self, vm: str, timeout: float) -> None:
        """Unregister and delete the settings, logs, saved states and every attached disk."""

    def unregister(self, vm: str, timeout: float) -> None:
        """Unregister only: every file of the VM stays (an adopted VM's destroy)."""
        raise Unsupported("virtualbox", "destroy", "this transport cannot unregister a VM without deleting it")

    def import_appliance(self, descriptor: Path, name: str, base_folder: Path, timeout: float) -> list[Path]:
        """Import the OVF ``descriptor`` (its disk files beside it) as VM ``name`` in
        ``base_folder/name``; return the paths of the hard disk images VirtualBox made for it."""
        raise Unsupported("virtualbox", "import_appliance", "this transport has no appliance import")

    @abstractmethod
    def vm_pid(self, vm: str, info: VMInfo) -> int | None:
        """The host process running the machine, if VirtualBox says."""

    @abstractmethod
    def metrics(self, vm: str) -> dict[str, tuple[float, str]]:
        """VirtualBox's performance metrics of a running machine: {metric: (value, unit)}."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the transport holds."""
