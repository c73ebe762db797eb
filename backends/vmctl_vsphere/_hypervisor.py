"""A connection to one ESXi host or vCenter, working in one datacenter and one VM folder."""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from vmctl.errors import BackendError, InvalidSpec, MachineExists, MachineNotFound, Unsupported, VmctlError
from vmctl.interface import Hypervisor, Machine
from vmctl.types import USAGE_FIELDS, Capabilities, MachineSpec, State

from ._disk import DESCRIPTOR_NAME, EXTENT_NAME, DiskImage, inspect_disk
from ._faults import BACKEND, map_fault
from ._machine import SPEC_KEY, VSphereMachine
from ._options import resolve_password, resolve_user, tls_context
from ._session import Session, fault_code, fault_name, fault_text, vim, vmodl

__all__ = ["IMAGE_DIR", "VSphereHypervisor", "open_hypervisor"]

log = logging.getLogger("vmctl.vsphere")

#: Where base images are uploaded on the datastore, one directory per content digest.
IMAGE_DIR = "vmctl-images"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]_-]+")


def _moref_order(ref: Any) -> tuple[int, str]:
    """Creation order of managed objects of one type (``vm-57`` before ``vm-103``)."""
    ident = str(ref._moId)
    digits = re.search(r"(\d+)$", ident)
    return (int(digits.group(1)) if digits else 1 << 62, ident)


class VSphereHypervisor(Hypervisor):
    """vSphere through pyvmomi. Machines are the VMs in ``folder`` (recursively) of ``datacenter``;
    ``machine(name)`` also opens, and ``machines(all=True)`` also lists, the datacenter's other VMs
    (adopted). A VM vmctl did not create (no ``vmctl.spec`` in its extraConfig) is not managed."""

    name = "vsphere"
    _feature_notes = {
        "kernel_boot": "vSphere boots VMs from disks; a kernel/initrd/cmdline cannot be given",
        "shared_dirs": "shared directories (9p) do not exist on vSphere",
        "serial_log": "the VM runs on an ESXi host",
        "port_forwards": "vSphere VMs sit on port groups, not behind NAT",
    }

    def __init__(
        self,
        session: Session,
        *,
        datacenter: str | None = None,
        folder: str | None = None,
        datastore: str | None = None,
        resource_pool: str | None = None,
        esx_host: str | None = None,
        network: str | None = None,
        guest_id: str = "otherGuest64",
    ) -> None:
        self.session = session
        self.content = session.content
        self._datastore_name = datastore
        self._pool_name = resource_pool
        self._esx_host_name = esx_host
        self._network_name = network
        self.guest_id = guest_id
        self._counters: dict[str, int] | None = None
        self.datacenter, self.datacenter_path = self._find_datacenter(datacenter)
        dc = session.props(self.datacenter, ["vmFolder", "hostFolder"])
        self._vm_root = dc["vmFolder"]
        self._host_folder = dc["hostFolder"]
        self.folder_path = [part for part in (folder or "").split("/") if part]
        for part in self.folder_path:
            if part in (".", ".."):
                raise InvalidSpec("folder", f"{folder!r} must be a path of folder names")
        self._folder: Any = self._find_folder(create=False)

    def __repr__(self) -> str:
        return f"<VSphereHypervisor {self.session.user}@{self.session.host} {self.datacenter_path}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            pause=False,  # the vSphere API has no pause
            suspend=True,
            snapshots=True,
            live_snapshots=True,
            graceful_restart=True,  # through VMware Tools; ToolsUnavailable without them
            network_toggle=True,
            cpu_limit=True,
            events=False,
            usage_fields=frozenset(USAGE_FIELDS),
            kernel_boot=False,
            shared_dirs=False,
            port_forwards=False,
            serial_log=False,
            screenshot=True,  # CreateScreenshot_Task (vcsim lacks it: Unsupported there)
        )

    # -- inventory -----------------------------------------------------------------------------
    def _find_datacenter(self, wanted: str | None) -> tuple[Any, str]:
        found = self.session.collect(self.content.rootFolder, vim.Datacenter, ["name", "parent"])
        names = sorted(str(p.get("name")) for _, p in found)
        matches = [(ref, p) for ref, p in found if wanted is None or p.get("name") == wanted]
        if not matches:
            raise InvalidSpec("datacenter", f"{wanted!r} is not a datacenter here (there are: {names})")
        if len(matches) > 1:
            raise InvalidSpec("datacenter", f"{len(matches)} datacenters here; pass datacenter= one of {names}")
        ref, p = matches[0]
        path = [str(p["name"])]
        parent = p.get("parent")
        root = self.content.rootFolder._moId
        while parent is not None and parent._moId != root:
            pp = self.session.props(parent, ["name", "parent"])
            path.insert(0, str(pp.get("name")))
            parent = pp.get("parent")
        return ref, "/".join(path)

    def _child(self, parent: Any, name: str) -> Any:
        children = self.session.props(parent, ["childEntity"]).get("childEntity") or []
        for child in children:
            if isinstance(child, vim.Folder) and self.session.props(child, ["name"]).get("name") == name:
                return child
        return None

    def _find_folder(self, create: bool) -> Any:
        folder = self._vm_root
        for part in self.folder_path:
            child = self._child(folder, part)
            if child is None:
                if not create:
                    return None
                try:
                    child = self.session.invoke(f"CreateFolder {part}", functools.partial(folder.CreateFolder, part))
                except vim.fault.DuplicateName:  # made meanwhile by another process
                    child = self._child(folder, part)
                except vmodl.MethodFault as fault:
                    raise BackendError(
                        f"creating folder {part!r}: {fault_text(fault)}",
                        command="CreateFolder",
                        code=fault_code(fault),
                        native=fault_name(fault),
                    ) from fault
                if child is None:
                    raise BackendError(f"folder {part!r} vanished while it was being created", command="CreateFolder")
            folder = child
        return folder

    def _vms(self) -> list[tuple[Any, dict[str, Any]]]:
        if self._folder is None:
            self._folder = self._find_folder(create=False)
            if self._folder is None:
                return []
        try:
            found = self.session.collect(self._folder, vim.VirtualMachine, ["name", "config.template"])
        except vmodl.fault.ManagedObjectNotFound:  # the folder was deleted
            self._folder = None
            return []
        return [(ref, p) for ref, p in found if not p.get("config.template")]

    def _all_vms(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every VM of the datacenter (adoptable ones outside the folder too), templates left out."""
        found = self.session.collect(self._vm_root, vim.VirtualMachine, ["name", "config.template"])
        return [(ref, p) for ref, p in found if not p.get("config.template")]

    def find_ref(self, name: str) -> Any:
        """The VM called ``name`` in the folder, else anywhere in the datacenter (adopted); the
        oldest one if a server allowed duplicates."""
        matches = sorted((ref for ref, p in self._vms() if p.get("name") == name), key=_moref_order)
        if not matches and self.folder_path:
            matches = sorted((ref for ref, p in self._all_vms() if p.get("name") == name), key=_moref_order)
        if not matches:
            raise MachineNotFound(name, BACKEND)
        if len(matches) > 1:
            log.warning("vsphere: %d VMs are called %r; using the oldest, %s", len(matches), name, matches[0]._moId)
        return matches[0]

    def _machine_names(self) -> list[str]:
        return sorted({str(p["name"]) for _, p in self._vms() if _NAME.fullmatch(str(p.get("name", "")))})

    def _all_machine_names(self) -> list[str]:
        return sorted({str(p["name"]) for _, p in self._all_vms() if _NAME.fullmatch(str(p.get("name", "")))})

    def _open_machine(self, name: str) -> VSphereMachine:
        return VSphereMachine(self, name, self.find_ref(name))

    def perf_counters(self) -> dict[str, int]:
        """``group.name.rollup`` -> counter key, read from ``perfManager.perfCounter`` once.

        (Not ``QueryPerfCounter``: vcsim 0.24.2 crashes on it.)
        """
        if self._counters is None:
            counters = self.session.props(self.content.perfManager, ["perfCounter"]).get("perfCounter") or []
            self._counters = {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": int(c.key) for c in counters}
        return self._counters

    # -- placement ---------------------------------------------------------------------------
    def _pick_datastore(self) -> tuple[Any, str]:
        candidates = []
        for ref in self.session.props(self.datacenter, ["datastore"]).get("datastore") or ():
            try:
                p = self.session.props(
                    ref, ["name", "summary.accessible", "summary.freeSpace", "summary.maintenanceMode"]
                )
            except vmodl.fault.ManagedObjectNotFound:  # listed but gone (vcsim's ESXi model lists one)
                continue
            name = str(p.get("name"))
            if self._datastore_name is not None:
                if name == self._datastore_name:
                    return ref, name
                continue
            if p.get("summary.accessible") and p.get("summary.maintenanceMode", "normal") == "normal":
                candidates.append((int(p.get("summary.freeSpace") or 0), name, ref))
        if self._datastore_name is not None:
            raise InvalidSpec("datastore", f"{self._datastore_name!r} is not a datastore of {self.datacenter_path}")
        if not candidates:
            raise BackendError(f"datacenter {self.datacenter_path} has no accessible datastore", command="create")
        _, name, ref = max(candidates, key=lambda c: (c[0], c[1]))
        return ref, name

    def _pick_placement(self, datastore: Any) -> tuple[Any, Any]:
        """(resource pool, host or None) for a new VM on ``datastore``."""
        session = self.session
        if self._esx_host_name is not None:
            hosts = session.collect(self._host_folder, vim.HostSystem, ["name", "parent"])
            for ref, p in hosts:
                if p.get("name") == self._esx_host_name:
                    pool = session.props(p["parent"], ["resourcePool"]).get("resourcePool")
                    if self._pool_name is not None:
                        pool = self._find_pool()
                    return pool, ref
            raise InvalidSpec("esx_host", f"{self._esx_host_name!r} is not a host of {self.datacenter_path}")
        if self._pool_name is not None:
            return self._find_pool(), None
        resources = session.collect(
            self._host_folder, vim.ComputeResource, ["name", "resourcePool", "datastore", "host"]
        )
        for ref, p in sorted(resources, key=lambda rp: str(rp[1].get("name"))):
            if datastore._moId not in {d._moId for d in p.get("datastore") or ()}:
                continue
            host = None
            if isinstance(ref, vim.ClusterComputeResource):
                drs = session.props(ref, ["configurationEx"]).get("configurationEx")
                if not getattr(getattr(drs, "drsConfig", None), "enabled", False):
                    host = self._pick_host(p.get("host") or [], datastore)
                    if host is None:
                        continue
            return p["resourcePool"], host
        raise BackendError(f"no host of {self.datacenter_path} mounts the datastore", command="create")

    def _pick_host(self, hosts: list[Any], datastore: Any) -> Any:
        for host in sorted(hosts, key=_moref_order):
            p = self.session.props(host, ["runtime.connectionState", "runtime.inMaintenanceMode", "datastore"])
            if (
                p.get("runtime.connectionState") == "connected"
                and not p.get("runtime.inMaintenanceMode")
                and datastore._moId in {d._moId for d in p.get("datastore") or ()}
            ):
                return host
        return None

    def _find_pool(self) -> Any:
        pools = self.session.collect(self._host_folder, vim.ResourcePool, ["name", "owner"])
        for ref, p in pools:
            if p.get("name") == self._pool_name:
                return ref
        resources = self.session.collect(self._host_folder, vim.ComputeResource, ["name", "resourcePool"])
        for _ref, p in resources:
            if p.get("name") == self._pool_name:
                return p["resourcePool"]
        raise InvalidSpec(
            "resource_pool", f"{self._pool_name!r} is no resource pool or cluster of {self.datacenter_path}"
        )

    def _nic(self) -> Any:
        wanted = self._network_name
        best: tuple[Any, str, int] | None = None
        for ref in self.session.props(self.datacenter, ["network"]).get("network") or ():
            name = str(self.session.props(ref, ["name"]).get("name"))
            if wanted is not None:
                if name == wanted:
                    best = (ref, name, -1)
                    break
                continue
            if isinstance(ref, vim.dvs.DistributedVirtualPortgroup):
                if self.session.props(ref, ["config.uplink"]).get("config.uplink"):
                    continue
                rank = 2
            elif isinstance(ref, vim.Network) and not isinstance(ref, vim.OpaqueNetwork):
                rank = 0 if name == "VM Network" else 1
            else:
                continue
            if best is None or rank < best[2]:
                best = (ref, name, rank)
        if best is None:
            what = f"{wanted!r} is not a network of" if wanted else "no usable network in"
            raise InvalidSpec("network", f"{what} {self.datacenter_path}")
        ref, name = best[0], best[1]
        if isinstance(ref, vim.dvs.DistributedVirtualPortgroup):
            p = self.session.props(ref, ["key", "config.distributedVirtualSwitch"])
            switch = self.session.props(p["config.distributedVirtualSwitch"], ["uuid"]).get("uuid")
            backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(portgroupKey=p["key"], switchUuid=switch)
            )
        elif isinstance(ref, vim.OpaqueNetwork):
            raise Unsupported(BACKEND, "create", f"network {name!r} is an NSX opaque network")
        else:
            backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=name, network=ref)
        return vim.vm.device.VirtualVmxnet3(
            key=-200,
            backing=backing,
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, connected=True, allowGuestControl=True
            ),
            addressType="generated",
        )

    # -- datastore files ---------------------------------------------------------------------
    def _ds_path(self, datastore: str, path: str) -> str:
        return f"[{datastore}] {path}"

    def delete_datastore_path(self, datastore: str, path: str, timeout: float) -> None:
        """Delete a datastore file or directory; a missing one is fine."""
        fm = self.content.fileManager
        name = self._ds_path(datastore, path)
        try:
            self.session.run_task(
                f"delete {name}", lambda: fm.DeleteDatastoreFile_Task(name=name, datacenter=self.datacenter), timeout
            )
        except vim.fault.FileNotFound:
            pass
        except vmodl.MethodFault as fault:
            raise BackendError(
                f"deleting {name}: {fault_text(fault)}",
                command="DeleteDatastoreFile_Task",
                code=fault_code(fault),
                native=fault_name(fault),
            ) from fault

    def ensure_image(self, image: DiskImage, datastore: str, timeout: float = 3600) -> str:
        """Upload ``image`` once per datastore (content-addressed); return its descriptor's path.

        Files are uploaded to a private staging directory and then moved into place one by one,
        so that nobody sees half a file, concurrent creators agree on one copy, and an image that
        lost a file is repaired by the next create (vcsim 0.24.2's snapshot removal can delete a
        base disk's descriptor, as it deletes files by stale layout keys).
        """
        directory = f"{IMAGE_DIR}/{image.digest[:32]}"
        extent_size = image.extent.stat().st_size
        sizes = {EXTENT_NAME: extent_size, DESCRIPTOR_NAME: len(image.descriptor)}
        dc_path = self.datacenter_path
        session = self.session

        def has(name: str) -> bool:
            return bool(session.file_exists(dc_path, datastore, f"{directory}/{name}", sizes[name]))

        descriptor = self._ds_path(datastore, f"{directory}/{DESCRIPTOR_NAME}")
        missing = [name for name in (EXTENT_NAME, DESCRIPTOR_NAME) if not has(name)]
        if not missing:
            return descriptor
        staging = f"{IMAGE_DIR}/.upload-{uuid.uuid4().hex}"
        fm = self.content.fileManager

        def make_directory(path: str) -> None:
            name = self._ds_path(datastore, path)
            try:
                session.invoke(
                    "MakeDirectory",
                    lambda: fm.MakeDirectory(name=name, datacenter=self.datacenter, createParentDirectories=True),
                )
            except vim.fault.FileAlreadyExists:
                pass

        def move_into_place(name: str) -> None:
            source = self._ds_path(datastore, f"{staging}/{name}")
            target = self._ds_path(datastore, f"{directory}/{name}")
            try:
                session.run_task(
                    f"move {source} to {target}",
                    lambda: fm.MoveDatastoreFile_Task(
                        sourceName=source,
                        sourceDatacenter=self.datacenter,
                        destinationName=target,
                        destinationDatacenter=self.datacenter,
                        force=False,
                    ),
                    timeout,
                )
            except vmodl.MethodFault as fault:
                if not has(name):  # else another process placed the same file first
                    raise BackendError(
                        f"placing {target}: {fault_text(fault)}",
                        command="MoveDatastoreFile_Task",
                        code=fault_code(fault),
                        native=fault_name(fault),
                    ) from fault

        try:
            make_directory(staging)
            make_directory(directory)
            for name in missing:
                if name == EXTENT_NAME:
                    log.info(
                        "vsphere: uploading %s (%d bytes) to [%s] %s", image.extent, extent_size, datastore, directory
                    )
                    session.upload(dc_path, datastore, f"{staging}/{name}", image.extent, session.timeout)
                else:
                    session.upload(dc_path, datastore, f"{staging}/{name}", image.descriptor, session.timeout)
                if not has(name):
                    move_into_place(name)
        except vmodl.MethodFault as fault:
            raise BackendError(
                f"uploading {image.source}: {fault_text(fault)}",
                command="upload",
                code=fault_code(fault),
                native=fault_name(fault),
            ) from fault
        finally:
            try:
                self.delete_datastore_path(datastore, staging, session.timeout)
            except VmctlError as exc:
                log.warning("vsphere: could not remove the staging directory %s: %s", staging, exc)
        return descriptor

    # -- create ------------------------------------------------------------------------------
    def _do_create(self, spec: MachineSpec) -> VSphereMachine:
        assert spec.disk is not None  # a spec without kernel has a disk
        image = inspect_disk(spec.disk)
        # anywhere in the datacenter: machine(name) would open an adopted VM of that name too
        if any(p.get("name") == spec.name for _, p in self._all_vms()):
            raise MachineExists(spec.name, BACKEND)
        folder = self._folder if self._folder is not None else self._find_folder(create=True)
        self._folder = folder
        ds_ref, ds_name = self._pick_datastore()
        pool, host = self._pick_placement(ds_ref)
        nic = self._nic() if spec.network is not None else None
        base = self.ensure_image(image, ds_name)

        controller = vim.vm.device.VirtualLsiLogicController(key=-100, busNumber=0, sharedBus="noSharing")
        devices = [vim.vm.device.VirtualDeviceSpec(operation="add", device=controller)]
        if spec.overlay:
            parent = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=base, diskMode="persistent")
            delta = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True, parent=parent, deltaDiskFormat="redoLogFormat"
            )
            disk = vim.vm.device.VirtualDisk(
                key=-101, controllerKey=-100, unitNumber=0, capacityInKB=image.capacity_kb, backing=delta
            )
            devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
        if nic is not None:
            devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
        config = vim.vm.ConfigSpec(
            name=spec.name,
            memoryMB=spec.memory_mib,
            numCPUs=spec.cpus,
            guestId=self.guest_id,
            files=vim.vm.FileInfo(vmPathName=f"[{ds_name}]"),
            deviceChange=devices,
            extraConfig=[vim.option.OptionValue(key=SPEC_KEY, value=json.dumps(spec.to_dict(), sort_keys=True))],
        )
        try:
            ref = self.session.run_task(
                f"create {spec.name}", lambda: folder.CreateVM_Task(config=config, pool=pool, host=host), 600
            )
        except vmodl.MethodFault as fault:
            raise map_fault(fault, machine=spec.name, verb="create", state=lambda: State.UNKNOWN) from fault
        vm = VSphereMachine(self, spec.name, ref)
        try:
            self._settle_duplicates(vm)
            if not spec.overlay:
                self._attach_copy(vm, base, image)
        except BaseException:
            try:
                vm._do_destroy(120)
            except VmctlError as exc:
                log.warning("vsphere: cleaning up the half-made VM %s failed: %s", spec.name, exc)
            raise
        return vm

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        from ._appliance import import_appliance

        return import_appliance(self, path, name, spec, timeout)

    def _settle_duplicates(self, vm: VSphereMachine) -> None:
        """Keep one VM per name: real vSphere refuses a duplicate in a folder, vcsim 0.24.2 does not.

        Every racer agrees that the oldest VM of the name wins; the others remove their own.
        """
        same = sorted((ref for ref, p in self._vms() if p.get("name") == vm.name), key=_moref_order)
        if same and same[0]._moId != vm.ref._moId:
            raise MachineExists(vm.name, BACKEND)

    def _attach_copy(self, vm: VSphereMachine, base: str, image: DiskImage) -> None:
        """overlay=False: a full copy of the base in the VM's directory, attached as its disk."""
        vmx = str(vm._props(["config.files.vmPathName"]).get("config.files.vmPathName"))
        directory = vmx.rsplit("/", 1)[0] if "/" in vmx else vmx
        target = f"{directory}/{vm.name}.vmdk"
        vdm = self.content.virtualDiskManager
        try:
            self.session.run_task(
                f"copy {base} to {target}",
                lambda: vdm.CopyVirtualDisk_Task(
                    sourceName=base,
                    sourceDatacenter=self.datacenter,
                    destName=target,
                    destDatacenter=self.datacenter,
                    force=False,
                ),
                3600,
            )
        except vmodl.MethodFault as fault:
            raise BackendError(
                f"copying the base disk for {vm.name}: {fault_text(fault)}",
                command="CopyVirtualDisk_Task",
                code=fault_code(fault),
                native=fault_name(fault),
            ) from fault
        disk = vim.vm.device.VirtualDisk(
            key=-101,
            controllerKey=-100,
            unitNumber=0,
            capacityInKB=image.capacity_kb,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=target, diskMode="persistent"),
        )
        controller = [
            d
            for d in vm._props(["config.hardware.device"]).get("config.hardware.device") or ()
            if isinstance(d, vim.vm.device.VirtualSCSIController)
        ]
        disk.controllerKey = controller[0].key if controller else -100
        vm._reconfigure(
            "create", vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)])
        )

    def close(self) -> None:
        """Log out. Machines keep running."""
        self.session.close()


def open_hypervisor(
    host: str,
    user: str | None = None,
    password: str | None = None,
    *,
    password_env: str | None = None,
    password_file: str | Path | None = None,
    port: int = 443,
    verify_tls: bool = True,
    ca_file: str | Path | None = None,
    datacenter: str | None = None,
    folder: str | None = None,
    datastore: str | None = None,
    resource_pool: str | None = None,
    esx_host: str | None = None,
    network: str | None = None,
    guest_id: str = "otherGuest64",
    timeout: float = 60,
) -> VSphereHypervisor:
    """Log in to ``host`` (an ESXi host or a vCenter) and work in one datacenter and VM folder."""
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise InvalidSpec("host", f"{host!r} is not a host name or address (give no scheme or path)")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidSpec("port", f"{port!r} is not a port number")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidSpec("timeout", f"{timeout!r} is not a positive number of seconds")
    session = Session(
        host=host.strip("[]"),
        port=port,
        user=resolve_user(user),
        password=resolve_password(password, password_env, password_file),
        context=tls_context(verify_tls, ca_file),
        timeout=float(timeout),
    )
    try:
        return VSphereHypervisor(
            session,
            datacenter=datacenter,
            folder=folder,
            datastore=datastore,
            resource_pool=resource_pool,
            esx_host=esx_host,
            network=network,
            guest_id=guest_id,
        )
    except BaseException:
        session.close()
        raise
