"""Importing an OVF appliance on vSphere: the OvfManager's import, as ovftool and govc do it.

The appliance is unpacked and checked by vmctl (:func:`vmctl.appliance.open_appliance`), then
``OvfManager.CreateImportSpec`` turns its descriptor into an import spec for the chosen datastore
and resource pool (vmctl adds its own ``vmctl.spec`` to the spec's extraConfig, so the VM is
vmctl's from the start), ``ResourcePool.ImportVApp`` creates the VM and returns an
``HttpNfcLease``, and each disk is sent to the lease's device URL (an HTTP PUT of the
stream-optimised VMDK, the format OVAs carry and the only one vSphere's import reads) before the
lease is completed; on any failure the lease is aborted and vSphere removes the half-made VM.

vcsim (govmomi's simulator) implements all three calls; its NFC endpoint accepts the upload and
discards the bytes, so against vcsim the imported VM has no disk content (the VM, its hardware
and its disk device exist). The machine's spec names the appliance file it came from, with
``overlay=False`` (the VM writes to its own disk in its directory; ``destroy`` deletes it).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.appliance import open_appliance
from vmctl.backend.appliance import appliance_name, appliance_spec, check_header, single_disk
from vmctl.errors import BackendError, ErrorCode, MachineExists, OperationTimeout, Unsupported, VmctlError
from vmctl.types import State

from ._faults import BACKEND, map_fault
from ._machine import SPEC_KEY, VSphereMachine
from ._session import fault_code, fault_name, fault_text, vim, vmodl

if TYPE_CHECKING:
    from ._hypervisor import VSphereHypervisor

log = logging.getLogger("vmctl.vsphere")

#: MachineSpec fields an import on vSphere takes besides the appliance's (set in the import spec).
_OVERRIDES = frozenset({"memory_mib", "cpus"})
_STREAM_VMDK = "application/x-vnd.vmware-streamVmdk"


def import_appliance(
    hv: VSphereHypervisor, path: Path, name: str | None, overrides: dict[str, Any], timeout: float
) -> VSphereMachine:
    extra = sorted(set(overrides) - _OVERRIDES)
    if extra:
        raise Unsupported(
            BACKEND, "import_appliance", "vSphere's OVF import takes memory_mib and cpus only, not " + ", ".join(extra)
        )
    deadline = time.monotonic() + timeout
    with open_appliance(path) as opened:
        app = opened.appliance
        chosen = appliance_name(app, name)
        disk = single_disk(app, BACKEND)
        if (disk.image_format, disk.subformat) != ("vmdk", "streamOptimized"):
            raise Unsupported(
                BACKEND, "import_appliance", "vSphere's OVF import reads stream-optimised VMDK disks only"
            )
        local = opened.disk_paths[disk.disk_id]
        check_header(local, "vmdk")
        spec = appliance_spec(opened, chosen, opened.source, overrides, overlay=False)
        if any(p.get("name") == chosen for _, p in hv._all_vms()):
            raise MachineExists(chosen, BACKEND)
        folder = hv._folder if hv._folder is not None else hv._find_folder(create=True)
        hv._folder = folder
        ds_ref, _ = hv._pick_datastore()
        pool, host = hv._pick_placement(ds_ref)
        session = hv.session
        params = vim.OvfManager.CreateImportSpecParams(entityName=chosen, diskProvisioning="thin")
        descriptor = opened.descriptor.read_text(encoding="utf-8")
        manager = hv.content.ovfManager
        try:
            result = session.invoke(
                "CreateImportSpec",
                lambda: manager.CreateImportSpec(
                    ovfDescriptor=descriptor, resourcePool=pool, datastore=ds_ref, cisp=params
                ),
            )
        except vmodl.MethodFault as fault:
            raise BackendError(
                f"vSphere refused the appliance's descriptor: {fault_text(fault)}",
                command="CreateImportSpec",
                code=fault_code(fault),
                native=fault_name(fault),
            ) from fault
        if result.error:
            texts = "; ".join(str(e.localizedMessage or fault_text(e.fault)) for e in result.error)
            raise BackendError(
                f"vSphere cannot import the appliance: {texts}",
                command="CreateImportSpec",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        import_spec = result.importSpec
        config = import_spec.configSpec
        config.memoryMB, config.numCPUs = spec.memory_mib, spec.cpus
        config.extraConfig = [
            *(config.extraConfig or ()),
            vim.option.OptionValue(key=SPEC_KEY, value=json.dumps(spec.to_dict(), sort_keys=True)),
        ]
        try:
            lease = session.invoke("ImportVApp", lambda: pool.ImportVApp(spec=import_spec, folder=folder, host=host))
        except vmodl.MethodFault as fault:
            raise map_fault(fault, machine=chosen, verb="import_appliance", state=lambda: State.UNKNOWN) from fault
        try:
            info = _ready(hv, lease, deadline)
            files = {item.deviceId: item for item in result.fileItem or ()}
            sent = 0
            for device in info.deviceUrl or ():
                item = files.get(device.importKey)
                if item is None:
                    continue
                source = opened.disk_paths.get(_disk_id(app, item.path))
                if source is None:
                    raise BackendError(f"vSphere asked for {item.path!r}, which is not a disk of the appliance")
                _put(hv, device.url, source, max(5.0, deadline - time.monotonic()))
                sent += 1
            if sent != len(files):
                raise BackendError(
                    f"the import lease offered {sent} of the {len(files)} disk uploads vSphere asked for"
                )
            session.invoke("HttpNfcLeaseProgress", lambda: lease.HttpNfcLeaseProgress(percent=100))
            session.invoke("HttpNfcLeaseComplete", lambda: lease.HttpNfcLeaseComplete())
        except BaseException as exc:
            log.warning("vsphere: import of %s failed (%s); aborting the lease", chosen, exc)
            try:
                session.invoke("HttpNfcLeaseAbort", lambda: lease.HttpNfcLeaseAbort())
            except (VmctlError, vmodl.MethodFault) as abort_exc:
                log.warning("vsphere: aborting the import lease failed: %s", abort_exc)
            raise
        vm = VSphereMachine(hv, chosen, info.entity)
        hv._settle_duplicates(vm)
        return vm


def _disk_id(app: Any, href: str) -> str:
    return next((d.disk_id for d in app.disks if d.href == href), "")


def _ready(hv: VSphereHypervisor, lease: Any, deadline: float) -> Any:
    """The lease's info once vSphere made the VM (state ``ready``); its error as a BackendError."""
    while True:
        p = hv.session.props(lease, ["state", "info", "error"])
        state = p.get("state")
        if state == "ready":
            return p["info"]
        if state == "error":
            fault = p.get("error")
            raise BackendError(
                f"vSphere could not create the imported VM: {fault_text(fault) if fault else 'lease error'}",
                command="ImportVApp",
                native=fault_name(fault) if fault else None,
            )
        if time.monotonic() > deadline:
            raise OperationTimeout("waiting for the import lease", 0)
        time.sleep(0.2)  # lease states have no property-collector wait in vcsim; a short poll


def _put(hv: VSphereHypervisor, url: str, source: Path, timeout: float) -> None:
    """PUT ``source`` to a lease device URL: ``https://*/nfc/...`` means the host vmctl talks to."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise BackendError(f"the import lease offers a non-HTTPS upload URL {url!r}")
    session = hv.session
    if parts.hostname in (None, "*"):
        conn = session._http(timeout)
    else:
        import http.client

        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=session.context, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    what = f"PUT {target}"
    try:
        with open(source, "rb") as body:
            size = source.stat().st_size
            headers = {"Cookie": session.cookie, "Content-Type": _STREAM_VMDK, "Content-Length": str(size)}
            conn.request("PUT", target, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read(4096).decode("utf-8", "replace")
    except TimeoutError:
        raise OperationTimeout(what, timeout) from None
    except OSError as exc:
        raise BackendError(f"{what}: {exc}", command=what, code=ErrorCode.CONNECTION) from exc
    finally:
        conn.close()
    if response.status not in (200, 201, 204):
        raise BackendError(f"{what}: HTTP {response.status} {response.reason}", command=what, stderr=text)
