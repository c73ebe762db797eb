"""LibvirtHypervisor and LibvirtMachine: vmctl's verbs on libvirt's domain API."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import libvirt

from vmctl.errors import BackendError, InvalidSpec, InvalidState, MachineExists, MachineNotFound, SnapshotNotFound
from vmctl.interface import Hypervisor, Machine
from vmctl.store import default_state_dir, machine_lock
from vmctl.types import Capabilities, MachineSpec, Snapshot, State, Usage
from vmctl.usage import pid_alive

from ._connection import Connection, is_remote
from ._storage import LocalOverlays, PoolOverlays, check_reachable
from ._xml import (
    NS,
    NS_CRASH_ACK,
    NS_PREFIX,
    Backing,
    DomainPlan,
    crash_ack_xml,
    domain_xml,
    metadata_json,
    netdev_id,
    parse_snapshot,
    set_link_state,
    snapshot_xml,
)

__all__ = ["LibvirtHypervisor", "LibvirtMachine"]

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
REMOTE_POOL_PATH = "/var/lib/libvirt/images/vmctl"
SYSTEM_STATE_DIR = Path("/var/lib/libvirt/images/vmctl")
QEMU_PID_DIR = Path("/var/run/libvirt/qemu")
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


def _usage_from(name: str, stats: dict[str, Any]) -> Usage:
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


def _spec_from(data: dict[str, Any]) -> MachineSpec:
    """The spec recorded at creation. Its paths are on the libvirt host, which may not be this
    one, so when they do not exist here the spec is rebuilt without checking them."""
    try:
        return MachineSpec.from_dict(data)
    except InvalidSpec:
        pass
    spec = object.__new__(MachineSpec)
    values = {f.name: f.default for f in dataclasses.fields(MachineSpec) if f.default is not dataclasses.MISSING}
    values["shared_dirs"] = {}
    values.update(data)
    for key in ("disk", "kernel", "initrd", "serial_log"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    values["shared_dirs"] = {tag: Path(p) for tag, p in dict(values.get("shared_dirs") or {}).items()}
    net = values.get("network")
    if isinstance(net, dict):
        from vmctl.types import Network, PortForward

        values["network"] = Network(port_forwards=[PortForward(**pf) for pf in net.get("port_forwards", [])])
    for key, value in values.items():
        object.__setattr__(spec, key, value)
    return spec


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
        return _spec_from(dict(self._meta()["spec"]))

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
        return _usage_from(self.name, stats[0][1] if stats else {})

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


class LibvirtHypervisor(Hypervisor):
    """vmctl on any libvirt URI: ``qemu:///system``, ``test:///default``, ``qemu+ssh://host/system``.

    Options: ``state_dir`` (where local overlays go; default ``/var/lib/libvirt/images/vmctl`` for
    ``qemu:///system`` as root, else vmctl's per-user state directory), ``pool`` (the storage
    pool for overlays on a remote host, created at ``pool_path`` if missing), ``accel`` ("tcg"
    or "kvm": the QEMU domain type), ``machine_type`` (default "q35"), ``check_access``
    (refuse images the daemon's QEMU user cannot reach, for local ``qemu:///system``).
    """

    name = "libvirt"

    def __init__(
        self,
        uri: str = "qemu:///system",
        *,
        state_dir: str | Path | None = None,
        pool: str = "vmctl",
        pool_path: str = REMOTE_POOL_PATH,
        accel: str = "tcg",
        machine_type: str = "q35",
        check_access: bool = True,
        keepalive: tuple[int, int] = (5, 3),
    ) -> None:
        if accel not in ("tcg", "kvm"):
            raise InvalidSpec("accel", f"{accel!r} is not 'tcg' or 'kvm'")
        self.uri = uri
        self.connection = Connection(uri, keepalive)
        self.remote = is_remote(uri)
        self.driver = str(self.connection.call("virConnectGetType", lambda c: c.getType())).upper()
        self.local_qemu = self.driver == "QEMU" and not self.remote
        self.privileged = self.local_qemu and uri.rstrip("/").endswith("/system")
        self.qemu_pid_dir = QEMU_PID_DIR
        self.accel = accel
        self.machine_type = machine_type
        self.check_access = check_access and self.privileged
        if state_dir is not None:
            directory = Path(state_dir).expanduser().absolute()
        elif self.privileged and os.geteuid() == 0:
            directory = SYSTEM_STATE_DIR
        else:
            directory = default_state_dir("libvirt") / "overlays"
        self._state_dir = directory
        self._local: LocalOverlays | None = None
        self._pool = PoolOverlays(self.connection, pool, pool_path)
        self._lock = threading.Lock()
        #: uuid -> metadata (vmctl's domains) or None (someone else's)
        self._owned: dict[str, dict[str, Any] | None] = {}
        #: name -> (connection generation, domain handle)
        self._handles: dict[str, tuple[int, libvirt.virDomain]] = {}
        self.connection.add_listener(self._on_event)
        self._capabilities = self._probe_capabilities()

    def __repr__(self) -> str:
        return f"<LibvirtHypervisor {self.uri}>"

    # -- plumbing -----------------------------------------------------------------------------
    def _overlays_for(self, kind: str) -> LocalOverlays | PoolOverlays:
        if kind == "volume":
            return self._pool
        if self._local is None:
            self._local = LocalOverlays(self._state_dir)
        return self._local

    def _on_event(self, name: str, event: int) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._forget(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)

    def _lookup(self, name: str) -> libvirt.virDomain:
        return self.connection.call("virDomainLookupByName", lambda c: c.lookupByName(name), name)

    def _domain(self, name: str) -> libvirt.virDomain:
        """The (cached) handle of vmctl's domain ``name``; MachineNotFound if there is none."""
        generation = self.connection.generation
        with self._lock:
            cached = self._handles.get(name)
        if cached is not None and cached[0] == generation:
            self.connection.get()  # reconnects, and so invalidates the handle, if the link dropped
            if self.connection.generation == generation:
                return cached[1]
        dom = self._lookup(name)
        if self._metadata_of(dom) is None:
            raise MachineNotFound(name, "libvirt")
        with self._lock:
            self._handles[name] = (self.connection.generation, dom)
        return dom

    def _metadata_of(self, dom: libvirt.virDomain) -> dict[str, Any] | None:
        """vmctl's metadata of ``dom``, or None if vmctl did not create it (cached by UUID)."""
        key = dom.UUIDString()
        with self._lock:
            if key in self._owned:
                return self._owned[key]
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            meta: dict[str, Any] | None = metadata_json(raw)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # gone meanwhile; do not cache
            if code != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                self.connection.raise_error(exc, "virDomainGetMetadata")
            meta = None
        except ValueError:
            log.warning("domain %s has unreadable vmctl metadata; ignoring it", dom.name())
            meta = None
        with self._lock:
            self._owned[key] = meta
        return meta

    def _metadata(self, name: str) -> dict[str, Any]:
        meta = self._metadata_of(self._domain(name))
        if meta is None:
            raise MachineNotFound(name, "libvirt")
        return meta

    # -- capabilities -------------------------------------------------------------------------
    def _probe_capabilities(self) -> Capabilities:
        if self.driver == "QEMU":
            return Capabilities(
                events=True,
                usage_fields=frozenset({"cpu_seconds", "memory_bytes", "disk_read_bytes", "disk_write_bytes"}),
            )
        if self.driver == "TEST":
            # The mock driver keeps states, snapshots and managed saves but has no guest: it
            # cannot change a NIC's link (virDomainUpdateDeviceFlags is not implemented) and
            # reports no statistics besides the state.
            return Capabilities(network_toggle=False, events=True, usage_fields=frozenset())
        # Other hypervisor drivers (xen, ch, lxc...) are untested: offer the common verbs only.
        return Capabilities(
            suspend=True,
            snapshots=False,
            live_snapshots=False,
            network_toggle=False,
            events=True,
            usage_fields=frozenset(),
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    # -- Hypervisor hooks ---------------------------------------------------------------------
    def _check_spec(self, spec: MachineSpec) -> None:
        if not self.check_access:
            return
        if spec.disk is not None:
            check_reachable(spec.disk, "disk", need_read=True)
        for label, path in (("kernel", spec.kernel), ("initrd", spec.initrd)):
            if path is not None:
                check_reachable(path, label, need_read=False)
        for tag, directory in spec.shared_dirs.items():
            check_reachable(directory / ".", f"shared_dirs[{tag}]", need_read=False)

    def _do_create(self, spec: MachineSpec) -> Machine:
        self._check_spec(spec)

        def exists(conn: libvirt.virConnect) -> bool:
            try:
                conn.lookupByName(spec.name)
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

        if self.connection.call("virDomainLookupByName", exists):
            raise MachineExists(spec.name, "libvirt")
        uuid = str(uuidlib.uuid4())
        overlay: dict[str, str] | None = None
        backing: Backing | None = None
        disk_path = str(spec.disk) if spec.disk is not None else None
        disk_format = "qcow2"
        store = self._overlays_for("volume" if self.remote else "file")
        if spec.disk is not None:
            backing = store.backing(spec.disk)
            if spec.overlay:
                disk_path = store.create(f"{spec.name}-{uuid[:8]}.qcow2", backing)
                overlay = {"kind": store.kind, "path": disk_path}
            else:
                disk_format, backing = backing.format, None
        metadata: dict[str, Any] = {"version": 1, "spec": spec.to_dict(), "created": time.time()}
        if overlay is not None:
            metadata["overlay"] = overlay
        plan = DomainPlan(
            domain_type="test" if self.driver == "TEST" else ("kvm" if self.accel == "kvm" else "qemu"),
            uuid=uuid,
            disk_path=disk_path,
            disk_format=disk_format,
            backing=backing,
            metadata=metadata,
            machine_type=self.machine_type if self.driver == "QEMU" else None,
        )
        xml = domain_xml(spec, plan)
        try:
            dom = self.connection.get().defineXML(xml)
        except libvirt.libvirtError as exc:
            if overlay is not None:
                with contextlib.suppress(Exception):
                    store.delete(overlay["path"])
            if exc.get_error_code() in (libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_OPERATION_FAILED) and (
                "already exists" in (exc.get_error_message() or "")
            ):
                raise MachineExists(spec.name, "libvirt") from exc
            self.connection.raise_error(exc, "virDomainDefineXML")
        with self._lock:
            self._owned[dom.UUIDString()] = metadata
            self._handles[spec.name] = (self.connection.generation, dom)
        return LibvirtMachine(self, spec.name)

    def _machine_names(self) -> list[str]:
        domains = self.connection.call("virConnectListAllDomains", lambda c: c.listAllDomains(0))
        return [str(d.name()) for d in domains if self._metadata_of(d) is not None]

    def _open_machine(self, name: str) -> Machine:
        self._domain(name)
        return LibvirtMachine(self, name)

    def usage_all(self) -> dict[str, Usage]:
        """Usage of every vmctl machine with ONE libvirt call (virConnectGetAllDomainStats).

        Domains not yet known to this connection cost one metadata look-up each, once.
        """
        stats = self.connection.call("virConnectGetAllDomainStats", lambda c: c.getAllDomainStats(STATS, 0))
        result: dict[str, Usage] = {}
        for dom, values in stats:
            if self._metadata_of(dom) is not None:
                name = str(dom.name())
                result[name] = _usage_from(name, values)
        return dict(sorted(result.items()))

    def close(self) -> None:
        """Close the libvirt connection; domains keep running."""
        self.connection.close()
