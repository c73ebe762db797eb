"""LibvirtHypervisor: vmctl on any libvirt URI, its domains marked by vmctl's metadata; other
domains are adopted (see _adopt.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import libvirt

from vmctl.backend.store import default_state_dir
from vmctl.errors import BackendError, InvalidSpec, MachineExists, os_error_code
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, MachineSpec, Usage

from ._connection import Connection, is_remote
from ._machine import STATS, LibvirtMachine, usage_from
from ._storage import LocalOverlays, PoolOverlays, check_reachable
from ._xml import NS, Backing, DomainPlan, domain_xml, metadata_json

__all__ = ["QEMU_PID_DIR", "QEMU_SAVE_DIR", "REMOTE_POOL_PATH", "SYSTEM_STATE_DIR", "LibvirtHypervisor"]

log = logging.getLogger("vmctl.libvirt")

REMOTE_POOL_PATH = "/var/lib/libvirt/images/vmctl"
SYSTEM_STATE_DIR = Path("/var/lib/libvirt/images/vmctl")
QEMU_PID_DIR = Path("/var/run/libvirt/qemu")
#: where the local QEMU driver keeps managed-save images (qemu:///system; session: under ~/.config)
QEMU_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")


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
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        self.qemu_save_dir = QEMU_SAVE_DIR if self.privileged else config_home / "libvirt" / "qemu" / "save"
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
        """The (cached) handle of domain ``name``, vmctl's or not; MachineNotFound if there is none."""
        generation = self.connection.generation
        with self._lock:
            cached = self._handles.get(name)
        if cached is not None and cached[0] == generation:
            self.connection.get()  # reconnects, and so invalidates the handle, if the link dropped
            if self.connection.generation == generation:
                return cached[1]
        dom = self._lookup(name)
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

    def _metadata(self, name: str) -> dict[str, Any] | None:
        """vmctl's metadata of domain ``name``; None for a domain vmctl did not create (adopted)."""
        return self._metadata_of(self._domain(name))

    # -- capabilities -------------------------------------------------------------------------
    def _probe_capabilities(self) -> Capabilities:
        if self.driver == "QEMU":
            return Capabilities(
                events=True,
                usage_fields=frozenset({"cpu_seconds", "memory_bytes", "disk_read_bytes", "disk_write_bytes"}),
                disk_usage=True,
                cdrom=True,
                extra_disks=True,
                floppy=True,
                screenshot=True,
            )
        if self.driver == "TEST":
            # The mock driver keeps states, snapshots and managed saves but has no guest: it
            # cannot change a NIC's link (virDomainUpdateDeviceFlags is not implemented) and
            # reports no statistics besides the state.
            # Its screenshot is a fixed picture (libvirt's test-screenshot.png).
            return Capabilities(
                network_toggle=False,
                events=True,
                usage_fields=frozenset(),
                disk_usage=True,
                screenshot=True,
                cdrom=True,
                extra_disks=True,
                floppy=True,
            )
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
        if spec.cdrom is not None:  # not relabelled: read as it is
            check_reachable(spec.cdrom, "cdrom", need_read=True)
        # writable: libvirt relabels them for QEMU (and back when it ends), as the overlay
        for label, path in (("floppy", spec.floppy), *(("extra_disks", d) for d in spec.extra_disks)):
            if path is not None:
                check_reachable(path, label, need_read=False)

    def _do_create(self, spec: MachineSpec) -> Machine:
        return self._define(spec)

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        from ._appliance import import_appliance

        return import_appliance(self, path, name, spec, timeout)

    def _define(self, spec: MachineSpec, extra_metadata: dict[str, Any] | None = None) -> Machine:
        """Define the domain of ``spec``; ``extra_metadata`` goes into vmctl's metadata element
        (an imported appliance's base image, which destroy deletes)."""
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
        metadata.update(extra_metadata or {})
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
            extra_disk_formats=tuple(store.backing(path).format for path in spec.extra_disks),
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

    def _all_machine_names(self) -> list[str]:
        domains = self.connection.call("virConnectListAllDomains", lambda c: c.listAllDomains(0))
        return [str(d.name()) for d in domains]

    def _open_machine(self, name: str) -> Machine:
        self._domain(name)
        return LibvirtMachine(self, name)

    def _delete_image(self, path: str) -> None:
        """Delete a disk image of an adopted domain: as a storage volume where a pool holds it,
        else, on a local connection, as a regular file (never a block device)."""

        def delete_volume(conn: libvirt.virConnect) -> bool:
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_SUPPORT):
                    return False
                raise
            vol.delete(0)
            return True

        if self.connection.call("virStorageVolDelete", delete_volume):
            return
        if self.remote:
            log.warning("disk %s is in no storage pool on %s: not deleted", path, self.uri)
            return
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
            else:
                log.warning("disk %s is not a regular file: not deleted", path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackendError(f"cannot delete disk {path}: {exc}", command=path, code=os_error_code(exc)) from exc

    def usage_all(self) -> dict[str, Usage]:
        """Usage of every vmctl machine with ONE libvirt call (virConnectGetAllDomainStats).

        Domains not yet known to this connection cost one metadata look-up each, once.
        """
        stats = self.connection.call("virConnectGetAllDomainStats", lambda c: c.getAllDomainStats(STATS, 0))
        result: dict[str, Usage] = {}
        for dom, values in stats:
            if self._metadata_of(dom) is not None:
                name = str(dom.name())
                result[name] = usage_from(name, values)
        return dict(sorted(result.items()))

    def close(self) -> None:
        """Close the libvirt connection; domains keep running."""
        self.connection.close()
