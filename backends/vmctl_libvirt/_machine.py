"""LibvirtMachine: vmctl's verbs on one libvirt domain."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from vmctl.backend.locking import machine_lock
from vmctl.backend.records import spec_from_record
from vmctl.backend.usage import pid_alive
from vmctl.errors import BackendError, InvalidState, MachineNotFound, SnapshotNotFound
from vmctl.interface import Machine
from vmctl.types import MachineSpec, Snapshot, State, Usage

from ._xml import (
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
#: libvirt's words when the domain was stopped (by a destroy) while a job of this verb ran
ENDED_MEANWHILE = "domain is no longer running"

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
    def _call(self, what: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        """Run ``fn(domain)``; a stale cached handle is looked up once more."""
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
                if ENDED_MEANWHILE in (exc.get_error_message() or ""):
                    # Another caller's destroy stops a domain even while this verb's job runs
                    # (libvirt lets a destroy past any other job): a lost race, not a failure.
                    state = self._safe_state()
                    log.info("%s: %s lost a race (now %s): %s", self.name, what, state.value, exc)
                    raise InvalidState(self.name, f"{what} (another caller stopped it meanwhile)", state) from exc
                hv.connection.raise_error(exc, what, self.name)
        raise MachineNotFound(self.name, "libvirt")

    def _safe_state(self) -> State:
        try:
            return self._get_state()
        except Exception:
            return State.UNKNOWN

    def _meta(self) -> dict[str, Any]:
        return self.hypervisor._metadata(self.name)

    @property
    def spec(self) -> MachineSpec:
        return spec_from_record(self._meta()["spec"])

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

        self._call("virDomainCreate", start)
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
        self._call("virDomainSuspend", lambda d: d.suspend())

    def _do_resume(self, timeout: float) -> None:
        self._call("virDomainResume", lambda d: d.resume())

    def _do_suspend(self, timeout: float) -> None:
        # SAVE_RUNNING: a machine suspended while paused comes back running, like every backend.
        self._call("virDomainManagedSave", lambda d: d.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING))

    def _do_request_shutdown(self) -> None:
        flags = 0 if self.hypervisor.driver == "TEST" else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        self._call("virDomainShutdownFlags", lambda d: d.shutdownFlags(flags))

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

        self._call("virDomainDestroy", poweroff)

    def _do_reset(self, timeout: float) -> None:
        self._call("virDomainReset", lambda d: d.reset(0))

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
        snap = self._call("virDomainSnapshotCreateXML", lambda d: d.snapshotCreateXML(xml, 0))
        return parse_snapshot(self._call("virDomainSnapshotGetXMLDesc", lambda _d: snap.getXMLDesc(0)))

    def _do_snapshots(self) -> list[Snapshot]:
        def listing(dom: libvirt.virDomain) -> list[Snapshot]:
            snaps = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
            return [parse_snapshot(s.getXMLDesc(0)) for s in snaps]

        # creationTime has one-second resolution; the stable sort keeps parents before children.
        return sorted(self._call("virDomainListAllSnapshots", listing), key=lambda s: s.created)

    def _snapshot(self, dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
        try:
            return dom.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                raise SnapshotNotFound(self.name, name) from exc
            raise

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        def revert(dom: libvirt.virDomain) -> None:
            snap = self._snapshot(dom, snapshot.name)
            if not dom.isActive() and dom.hasManagedSaveImage(0):
                # A revert replaces the current state; libvirt would otherwise keep the saved one.
                dom.managedSaveRemove(0)
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if snapshot.has_memory else 0
            dom.revertToSnapshot(snap, flags)
            if self._crash_acknowledged(dom):
                self._set_crash_acknowledged(dom, False)

        self._call("virDomainRevertToSnapshot", revert)
        if snapshot.has_memory:
            self._apply_forwards()

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        self._call("virDomainSnapshotDelete", lambda d: self._snapshot(d, name).delete(0))

    def _do_usage(self) -> Usage:
        hv = self.hypervisor
        dom = hv._domain(self.name)
        stats = hv.connection.call("virDomainListGetStats", lambda c: c.domainListGetStats([dom], STATS, 0), self.name)
        return usage_from(self.name, stats[0][1] if stats else {})

    def _do_set_network(self, enabled: bool) -> None:
        def set_link(dom: libvirt.virDomain) -> None:
            nic = set_link_state(dom.XMLDesc(0), enabled)
            if nic is None:
                raise BackendError(f"{self.name}: the running domain has no vmctl network interface")
            dom.updateDeviceFlags(nic, libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._call("virDomainUpdateDeviceFlags", set_link)

    def _do_destroy(self, timeout: float) -> None:
        hv = self.hypervisor
        meta = self._meta()
        overlay = meta.get("overlay")

        def undefine(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                dom.destroy()
            if overlay is None:
                # Internal snapshots live in the image itself: delete them properly, leaves first.
                snaps = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
                for snap in reversed(snaps):
                    snap.delete(0)
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                # The test driver reports "no domain" after undefining with these flags.
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise

        self._call("virDomainUndefineFlags", undefine)
        hv._forget(self.name)
        if overlay is not None:
            hv._overlays_for(str(overlay.get("kind", "file"))).delete(str(overlay["path"]))
