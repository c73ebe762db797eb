"""LibvirtMachine: vmctl's verbs on one libvirt domain."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from vmctl.backend.locking import machine_lock
from vmctl.backend.logs import log_tail
from vmctl.backend.records import spec_from_record
from vmctl.backend.usage import pid_alive
from vmctl.errors import BackendError, InvalidState, MachineNotFound
from vmctl.interface import Machine
from vmctl.types import Capabilities, DiskUsage, MachineSpec, Snapshot, State, Usage

from ._adopt import disk_files, has_nvram, spec_from_domain
from ._races import create_snapshot, delete_snapshot, list_snapshots, raise_if_lost_race, revert_to
from ._screenshot import screenshot_of
from ._xml import (
    NIC_ALIAS,
    NS_CRASH_ACK,
    NS_PREFIX,
    crash_ack_xml,
    netdev_id,
    parse_snapshot,
    set_link_state,
    snapshot_xml,
)

if TYPE_CHECKING:
    from ._hypervisor import LibvirtHypervisor

__all__ = ["STATS", "LibvirtMachine", "usage_from"]

log = logging.getLogger("vmctl.libvirt")

T = TypeVar("T")

#: Statistics groups read for usage: one virConnectGetAllDomainStats / virDomainListGetStats call.
STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
#: Longest a wait sleeps without an event before it reads the state again (a safety net only).
EVENT_WAIT_CAP = 5.0
LOCK_DIR = ".vmctl-locks"

_S = libvirt


def _state_from(state: int, reason: int) -> State | None:
    """vmctl's state from libvirt's (state, reason); None for "shut off", which needs a closer look."""
    if state in (_S.VIR_DOMAIN_RUNNING, _S.VIR_DOMAIN_BLOCKED, _S.VIR_DOMAIN_SHUTDOWN):
        return State.RUNNING
    if state == _S.VIR_DOMAIN_PAUSED:
        if reason == _S.VIR_DOMAIN_PAUSED_CRASHED:
            return State.CRASHED
        if reason == _S.VIR_DOMAIN_PAUSED_SHUTTING_DOWN:
            return State.RUNNING
        return State.PAUSED
    if state == _S.VIR_DOMAIN_CRASHED:
        return State.CRASHED
    if state == _S.VIR_DOMAIN_SHUTOFF:
        return None
    return State.UNKNOWN


def usage_from(name: str, stats: dict[str, Any]) -> Usage:
    state = stats.get("state.state")
    if state not in (_S.VIR_DOMAIN_RUNNING, _S.VIR_DOMAIN_BLOCKED, _S.VIR_DOMAIN_PAUSED, _S.VIR_DOMAIN_SHUTDOWN):
        return Usage(machine=name)

    def total(prefix: str, count_key: str, suffix: str) -> int | None:
        count = stats.get(count_key)
        if not isinstance(count, int) or count == 0:
            return None
        values = [stats.get(f"{prefix}.{i}.{suffix}") for i in range(count)]
        found = [v for v in values if isinstance(v, int)]
        return sum(found) if found else None

    cpu = stats.get("cpu.time")
    rss = stats.get("balloon.rss")
    return Usage(
        machine=name,
        cpu_seconds=cpu / 1e9 if isinstance(cpu, int) else None,
        memory_bytes=rss * 1024 if isinstance(rss, int) else None,
        disk_read_bytes=total("block", "block.count", "rd.bytes"),
        disk_write_bytes=total("block", "block.count", "wr.bytes"),
        net_rx_bytes=total("net", "net.count", "rx.bytes"),
        net_tx_bytes=total("net", "net.count", "tx.bytes"),
    )


class LibvirtMachine(Machine):
    """A vmctl machine as a persistent libvirt domain carrying vmctl's metadata."""

    hypervisor: LibvirtHypervisor

    def __init__(self, hypervisor: LibvirtHypervisor, name: str) -> None:
        super().__init__(hypervisor, name)
        self._seen_changes = 0

    def _exclusive(self, verb: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """libvirtd holds no lock across vmctl's check and action and accepts some verbs in their
        target state, so vmctl callers on this host also take a lock file in ``state_dir``
        (none where it is not writable); other callers meet libvirt's refusals (see _call)."""
        return machine_lock(self.hypervisor._state_dir / LOCK_DIR, self.name, verb, timeout, optional=True)

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[libvirt.virDomain], T], verb: str | None = None) -> T:
        """Run ``fn(domain)``; a stale cached handle is looked up once more. For a ``verb``, a
        failure that says another caller moved the domain is answered as its state says."""
        hv = self.hypervisor
        for attempt in (1, 2):
            dom = hv._domain(self.name)
            try:
                return fn(dom)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and attempt == 1:
                    hv._forget(self.name)
                    continue
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    state = self._safe_state()
                    raise InvalidState(self.name, f"{what} ({exc.get_error_message()})", state) from exc
                raise_if_lost_race(self.name, exc, what, verb, self._safe_state)
                hv.connection.raise_error(exc, what, self.name)
        raise MachineNotFound(self.name, "libvirt")

    def _safe_state(self) -> State:
        try:
            return self._get_state()
        except Exception:
            return State.UNKNOWN

    def _meta(self) -> dict[str, Any] | None:
        return self.hypervisor._metadata(self.name)

    @property
    def managed(self) -> bool:
        return self._meta() is not None

    @property
    def spec(self) -> MachineSpec:
        meta = self._meta()
        if meta is None:
            xml = self._call("virDomainGetXMLDesc", lambda d: d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            return spec_from_domain(xml)
        return spec_from_record(meta["spec"])

    @property
    def capabilities(self) -> Capabilities:
        caps = self.hypervisor.capabilities
        if caps.snapshots and self._why("snapshots"):
            return caps.without("snapshots", "live_snapshots")
        return caps

    def _why(self, capability: str) -> str:
        if capability in ("snapshots", "live_snapshots") and self._meta() is not None:
            spec = self.spec
            if spec.extra_disks or spec.floppy is not None:
                # an internal snapshot of the overlay would pair the guest's memory with extra
                # disks (written as they are, raw or VDI) in another state
                return "the machine has extra disks or a floppy, written as they are: a snapshot would not hold them"
        return ""

    def _crash_acknowledged(self, dom: libvirt.virDomain) -> bool:
        try:
            dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_CRASH_ACK, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return False
            raise

    def _set_crash_acknowledged(self, dom: libvirt.virDomain, value: bool) -> None:
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            crash_ack_xml() if value else None,
            NS_PREFIX + "ack" if value else None,
            NS_CRASH_ACK,
            libvirt.VIR_DOMAIN_AFFECT_CONFIG,
        )

    # -- state --------------------------------------------------------------------------------
    def _get_state(self) -> State:
        self._seen_changes = self.hypervisor.connection.change_count(self.name)

        def read(dom: libvirt.virDomain) -> State:
            state, reason = dom.state()
            mapped = _state_from(state, reason)
            if mapped is not None:
                return mapped
            if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED and not self._crash_acknowledged(dom):
                return State.CRASHED
            return State.SUSPENDED if dom.hasManagedSaveImage(0) else State.STOPPED

        return self._call("virDomainGetState", read)

    def _wait_changed(self, last: State, timeout: float) -> None:
        if not self.hypervisor.capabilities.events:
            super()._wait_changed(last, timeout)
            return
        self.hypervisor.connection.wait_change(self.name, self._seen_changes, min(timeout, EVENT_WAIT_CAP))

    def _get_pid(self) -> int | None:
        hv = self.hypervisor
        if not hv.local_qemu:
            return None
        if not self._call("virDomainIsActive", lambda d: bool(d.isActive())):
            return None
        try:
            pid = int((hv.qemu_pid_dir / f"{self.name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # -- verbs --------------------------------------------------------------------------------
    def _do_start(self, timeout: float) -> None:
        def start(dom: libvirt.virDomain) -> None:
            state, reason = dom.state()
            if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
                # CRASHED boots afresh: a saved state from before the crash is not restored.
                if dom.hasManagedSaveImage(0):
                    dom.managedSaveRemove(0)
            if self._crash_acknowledged(dom):
                self._set_crash_acknowledged(dom, False)
            dom.create()  # restores the managed save image if there is one

        self._call("virDomainCreate", start, "start")
        self._apply_forwards()

    def _apply_forwards(self) -> None:
        """Add the spec's port forwards to a freshly started QEMU (libvirt 9.0 cannot express
        forwards of user-mode networking in domain XML; passt's <portForward> needs 9.2)."""
        hv = self.hypervisor
        spec = self.spec
        if spec.network is None or not spec.network.port_forwards or hv.driver != "QEMU":
            return
        # Imported by name: libvirt_qemu ships no type information.
        libvirt_qemu: Any = importlib.import_module("libvirt_qemu")

        def add(dom: libvirt.virDomain) -> None:
            netdev = netdev_id(dom.XMLDesc(0))
            if netdev is None:
                raise BackendError(f"{self.name}: the running domain has no vmctl network interface")
            for pf in spec.network.port_forwards:  # type: ignore[union-attr]
                rule = f"{pf.protocol}:{pf.host_address}:{pf.host_port}"
                # Remove first: after an in-place revert the rule may still be there.
                libvirt_qemu.qemuMonitorCommand(
                    dom, f"hostfwd_remove {netdev} {rule}", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
                )
                out = libvirt_qemu.qemuMonitorCommand(
                    dom,
                    f"hostfwd_add {netdev} {rule}-:{pf.guest_port}",
                    libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
                )
                if out.strip():
                    raise BackendError(f"{self.name}: port forward {rule} failed: {out.strip()}", command="hostfwd_add")

        self._call("qemuMonitorCommand(hostfwd_add)", add)

    def _do_pause(self, timeout: float) -> None:
        self._call("virDomainSuspend", lambda d: d.suspend(), "pause")

    def _do_resume(self, timeout: float) -> None:
        self._call("virDomainResume", lambda d: d.resume(), "resume")

    def _do_suspend(self, timeout: float) -> None:
        # SAVE_RUNNING: a machine suspended while paused comes back running, like every backend.
        self._call("virDomainManagedSave", lambda d: d.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING), "suspend")

    def _do_request_shutdown(self) -> None:
        flags = 0 if self.hypervisor.driver == "TEST" else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        self._call("virDomainShutdownFlags", lambda d: d.shutdownFlags(flags), "stop")

    def _do_poweroff(self, timeout: float) -> None:
        def poweroff(dom: libvirt.virDomain) -> None:
            state, reason = dom.state()
            if state == libvirt.VIR_DOMAIN_SHUTOFF:
                if dom.hasManagedSaveImage(0):
                    dom.managedSaveRemove(0)
                if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
                    self._set_crash_acknowledged(dom, True)
                return
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                # The guest may have shut down by itself a moment ago.
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                    raise

        self._call("virDomainDestroy", poweroff, "poweroff")

    def _do_reset(self, timeout: float) -> None:
        self._call("virDomainReset", lambda d: d.reset(0), "restart")

    def _do_reboot(self, timeout: float) -> bool:
        conn = self.hypervisor.connection
        if self.hypervisor.driver == "TEST":
            # The mock driver reboots synchronously and sends no reboot event.
            self._call("virDomainReboot", lambda d: d.reboot(0))
            return True
        seen = conn.reboot_count(self.name)
        # With the ACPI flag, libvirt presses the power button and, when the guest powers off,
        # resets it instead of ending QEMU ("fake reboot"); the reset sends a reboot event.
        self._call("virDomainReboot", lambda d: d.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN))
        return conn.wait_reboot(self.name, seen, timeout)

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        xml = snapshot_xml(name, description)
        snap = self._call("virDomainSnapshotCreateXML", lambda d: create_snapshot(d, self.name, name, xml), "snapshot")
        return parse_snapshot(self._call("virDomainSnapshotGetXMLDesc", lambda _d: snap.getXMLDesc(0)))

    def _do_snapshots(self) -> list[Snapshot]:
        # creationTime has one-second resolution; the stable sort keeps parents before children.
        return sorted(self._call("virDomainListAllSnapshots", list_snapshots), key=lambda s: s.created)

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        def revert(dom: libvirt.virDomain) -> None:
            revert_to(dom, self.name, snapshot)
            if self._crash_acknowledged(dom):
                self._set_crash_acknowledged(dom, False)

        self._call("virDomainRevertToSnapshot", revert, "revert")
        if snapshot.has_memory:
            self._apply_forwards()

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        self._call("virDomainSnapshotDelete", lambda d: delete_snapshot(d, self.name, name), "delete_snapshot")

    def _do_usage(self) -> Usage:
        hv = self.hypervisor
        dom = hv._domain(self.name)
        stats = hv.connection.call("virDomainListGetStats", lambda c: c.domainListGetStats([dom], STATS, 0), self.name)
        return usage_from(self.name, stats[0][1] if stats else {})

    def _do_disk_usage(self) -> DiskUsage:
        """The overlay (a local file, or a pool volume whose allocation the daemon reports) and,
        on a local QEMU driver, the managed-save image. Libvirt's own log of the domain is not
        counted (the daemon keeps and rotates it)."""
        hv = self.hypervisor
        overlay = (self._meta() or {}).get("overlay")  # an adopted domain has none of vmctl's
        total, paths = 0, []
        if overlay is not None:
            path = str(overlay["path"])
            paths.append(path)
            total += hv._pool.allocation(path) if overlay.get("kind") == "volume" else _allocated(path)
        if hv.local_qemu and self._call("virDomainHasManagedSaveImage", lambda d: bool(d.hasManagedSaveImage(0))):
            saved = hv.qemu_save_dir / f"{self.name}.save"
            paths.append(str(saved))
            total += _allocated(str(saved))
        return DiskUsage(self.name, total, tuple(paths))

    def hypervisor_log(self, max_bytes: int = 4000) -> str:
        """The end of libvirt's log of this domain's QEMU (``/var/log/libvirt/qemu/NAME.log``,
        under ``qemu:///session`` ``~/.cache/libvirt/qemu/log/NAME.log``) on a local QEMU
        driver; "" elsewhere or where it cannot be read."""
        hv = self.hypervisor
        if not hv.local_qemu:
            return ""
        if urllib.parse.urlparse(hv.uri).path.rstrip("/") == "/session":
            folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "libvirt" / "qemu" / "log"
        else:
            folder = Path("/var/log/libvirt/qemu")
        return log_tail(folder / f"{self.name}.log", max_bytes)

    def _do_screenshot(self, timeout: float) -> bytes:
        return self._call("screenshot", lambda dom: screenshot_of(dom, self.hypervisor.name), "screenshot")

    def _do_set_network(self, enabled: bool) -> None:
        alias = NIC_ALIAS if self.managed else None

        def set_link(dom: libvirt.virDomain) -> None:
            nic = set_link_state(dom.XMLDesc(0), enabled, alias)
            if nic is None:
                raise BackendError(f"{self.name}: the running domain has no vmctl network interface")
            dom.updateDeviceFlags(nic, libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._call("virDomainUpdateDeviceFlags", set_link)

    def _do_destroy(self, timeout: float) -> None:
        hv = self.hypervisor
        meta = self._meta() or {}
        overlay = meta.get("overlay")

        def undefine(dom: libvirt.virDomain) -> None:
            # internal snapshots live in the image itself: delete them properly, leaves first
            undefine_domain(dom, delete_snapshots=overlay is None)

        self._call("virDomainUndefineFlags", undefine)
        hv._forget(self.name)
        if overlay is not None:
            hv._overlays_for(str(overlay.get("kind", "file"))).delete(str(overlay["path"]))
        base = meta.get("appliance_base")  # an imported appliance's disk, converted by vmctl
        if base is not None:
            hv._overlays_for("file").delete(str(base))

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        """Undefine a domain vmctl did not create. Its managed save image goes (libvirt's own
        file); its disks, with any internal snapshots in them, and its NVRAM stay unless
        ``delete_disks``."""
        hv = self.hypervisor
        disks: list[str] = []

        def undefine(dom: libvirt.virDomain) -> None:
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            disks.extend(disk_files(xml))
            # deleting the images deletes their internal snapshots: delete them properly first
            undefine_domain(dom, delete_snapshots=delete_disks, nvram=delete_disks if has_nvram(xml) else None)

        self._call("virDomainUndefineFlags", undefine)
        hv._forget(self.name)
        if delete_disks:
            for path in disks:
                log.info("%s: deleting disk %s (delete_disks=True)", self.name, path)
                hv._delete_image(path)


def undefine_domain(dom: libvirt.virDomain, delete_snapshots: bool, nvram: bool | None = None) -> None:
    """Undefine ``dom`` (ended first if it runs) with its managed save image and snapshot
    metadata; with ``delete_snapshots`` its snapshots are deleted first, leaves first. ``nvram``:
    delete (True) or keep (False) its UEFI variables; None for a domain that has none (undefine
    refuses one that has them without either flag)."""
    if dom.isActive():
        dom.destroy()
    if delete_snapshots:
        for snap in reversed(dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)):
            snap.delete(0)
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    if nvram is not None:
        flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM if nvram else libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        # the test driver reports "no domain" after undefining with these flags
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def _allocated(path: str) -> int:
    """Bytes a local file occupies; 0 if it is gone or this user may not see it."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.debug("cannot measure %s: %s", path, exc)
        return 0
