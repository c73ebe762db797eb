"""Importing an OVF appliance on VMware Workstation/Player/Fusion (vmrun has no import verb).

VMware's own importer is ``ovftool``, a separate program vmctl does not drive; vmrun opens
``.vmx`` files only. So the import is done the way ``new_vmx`` makes a machine for a disk: the
appliance (unpacked and checked by :func:`vmctl.appliance.open_appliance`) has its disk
converted by ``qemu-img convert -O vmdk`` (a hosted sparse VMDK, which Workstation runs; the
stream-optimised VMDK an OVA carries is an import format it does not run) into
``appliance.vmdk`` in the machine's directory, and the machine's ``.vmx`` names it
(``overlay=False``: the machine writes to that disk, which is vmctl's, and ``destroy`` deletes it
with the directory). Needs ``qemu-img`` (qemu-utils) on the host, else :class:`Unsupported`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.appliance import open_appliance
from vmctl.backend.appliance import appliance_name, appliance_spec, convert_disk, refuse_features, single_disk
from vmctl.backend.store import atomic_write
from vmctl.errors import MachineExists, Unsupported
from vmctl.interface import Machine

from ._machine import VmwareMachine
from ._vmx import apply_spec, new_vmx

if TYPE_CHECKING:
    from ._hypervisor import VmwareHypervisor

DISK = "appliance.vmdk"


def import_appliance(
    hv: VmwareHypervisor, path: Path, name: str | None, overrides: dict[str, Any], timeout: float
) -> Machine:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise Unsupported(
            "vmware", "import_appliance", "converting the disk needs qemu-img (apt-get install qemu-utils)"
        )
    with open_appliance(path, workdir=hv.store.root) as opened:
        app = opened.appliance
        chosen = appliance_name(app, name)
        disk = single_disk(app, "vmware")
        if hv.store.exists(chosen):
            raise MachineExists(chosen, "vmware")
        with hv.store.creating(chosen) as directory:
            converted = directory / DISK
            convert_disk(qemu_img, opened.disk_paths[disk.disk_id], disk.image_format, converted, timeout, out="vmdk")
            final = hv.store.path(chosen) / DISK
            spec = appliance_spec(opened, chosen, converted, overrides, overlay=False)
            refuse_features(hv, spec)
            vmx = new_vmx(chosen, final)
            apply_spec(vmx, spec)
            vmx.save(directory / f"{chosen}.vmx")
            spec_dict = spec.to_dict()
            spec_dict["disk"] = str(final)  # where it is once the directory is in place
            record = {
                "spec": spec_dict,
                "product": hv.product,
                "base": None,
                "created": time.time(),
                "paused": False,
                "snapshots": {},
                "current": None,
                "appliance": str(opened.source),
            }
            atomic_write(directory / "machine.json", json.dumps(record, indent=1, sort_keys=True).encode())
    return VmwareMachine(hv, chosen)
