"""Importing an OVF appliance on libvirt: its disk converted into the overlay directory.

On a local URI the appliance's disk is converted by ``qemu-img convert`` (stream-optimised VMDK
and the other formats qemu-img reads) into ``NAME-appliance-ID.qcow2`` in the connection's
overlay directory (``state_dir``), and the domain made over it as over any base image (with its
own overlay); vmctl's metadata names the converted image, which ``destroy`` deletes with the
overlay. An ``.ovf`` whose disk is already qcow2 is not copied: the domain's overlay is
made over the file beside the descriptor. A remote URI is refused (:class:`Unsupported`): the
disk would have to be uploaded into a storage pool on the other host, which vmctl does not do.
"""

from __future__ import annotations

import contextlib
import os
import uuid
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
from vmctl.errors import Unsupported
from vmctl.interface import Machine

from ._storage import LocalOverlays

if TYPE_CHECKING:
    from ._hypervisor import LibvirtHypervisor


def import_appliance(
    hv: LibvirtHypervisor, path: Path, name: str | None, overrides: dict[str, Any], timeout: float
) -> Machine:
    if hv.remote:
        raise Unsupported(
            "libvirt", "import_appliance", "on a remote URI (the disk would have to be uploaded to a pool there)"
        )
    store = hv._overlays_for("file")
    assert isinstance(store, LocalOverlays)
    with open_appliance(path, workdir=store.directory) as opened:
        app = opened.appliance
        name = appliance_name(app, name)
        disk = single_disk(app, "libvirt")
        source = opened.disk_paths[disk.disk_id]
        if not opened.packaged and disk.image_format in ("qcow2", "raw"):
            check_image("qemu-img", source, disk.image_format)
            return hv.create(appliance_spec(opened, name, source, overrides))
        base = store.directory / f"{name}-appliance-{uuid.uuid4().hex[:8]}.qcow2"
        try:
            if disk.image_format == "qcow2":  # unpacked by vmctl: moved, not copied
                check_image("qemu-img", source, "qcow2")
                os.rename(source, base)
            else:
                convert_disk("qemu-img", source, disk.image_format, base, timeout)
            spec = appliance_spec(opened, name, base, overrides)
            refuse_features(hv, spec)
            return hv._define(spec, {"appliance_base": str(base)})
        except BaseException:
            with contextlib.suppress(OSError):
                base.unlink()
            raise
