"""Importing an OVF appliance on QEMU: its disk converted into the machine's directory.

An OVA is unpacked into the state directory (so that its disk can be moved, not copied, into the
machine's directory), its disk converted by ``qemu-img convert`` (which reads stream-optimised
VMDK, the format OVAs carry) into ``appliance.qcow2`` in the machine's directory, and the machine
made over it as over any base image: its own overlay ``disk.qcow2`` (backing file named
relatively, so it survives the rename of the directory into place). ``destroy`` deletes both,
as vmctl made both. An ``.ovf`` whose disk is already qcow2 is not copied: the machine's
overlay is made directly over the file beside the descriptor, which stays the caller's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.appliance import open_appliance
from vmctl.backend.appliance import (
    appliance_name,
    appliance_spec,
    check_image,
    convert_disk,
    refuse_features,
    single_disk,
)
from vmctl.backend.tools import run_tool
from vmctl.interface import Machine

if TYPE_CHECKING:
    from ._hypervisor import QemuHypervisor

#: The converted base image inside the machine's directory.
BASE = "appliance.qcow2"


def import_appliance(
    hv: QemuHypervisor, path: Path, name: str | None, overrides: dict[str, Any], timeout: float
) -> Machine:
    from ._hypervisor import OVERLAY
    from ._machine import QemuMachine

    with open_appliance(path, workdir=hv.store.root) as opened:
        app = opened.appliance
        name = appliance_name(app, name)
        disk = single_disk(app, hv.name)
        source = opened.disk_paths[disk.disk_id]
        if not opened.packaged and disk.image_format in ("qcow2", "raw"):
            check_image(hv.qemu_img, source, disk.image_format)
            return hv.create(appliance_spec(opened, name, source, overrides))
        with hv.store.creating(name) as directory:
            base = directory / BASE
            if disk.image_format == "qcow2":  # unpacked by vmctl: moved, not copied
                check_image(hv.qemu_img, source, "qcow2")
                os.rename(source, base)
            else:
                convert_disk(hv.qemu_img, source, disk.image_format, base, timeout)
            spec = appliance_spec(opened, name, base, overrides)
            refuse_features(hv, spec)
            run_tool(
                [hv.qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", BASE, str(directory / OVERLAY)],
                timeout=60,
            )
            spec_dict = spec.to_dict()
            spec_dict["disk"] = str(hv.store.path(name) / BASE)  # where it is once the directory is in place
            record: dict[str, Any] = {
                "spec": spec_dict,
                "created": time.time(),
                "status": "stopped",
                "run_id": None,
                "notes": {},
                "disk": OVERLAY,
                "disk_format": "qcow2",
                "appliance": str(opened.source),
            }
            (directory / "machine.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        return QemuMachine(hv, name)
