"""What backends share to import an appliance: its disk checked and converted with qemu-img.

An appliance's disk image is a stranger's file too: a VMDK can be a text descriptor naming
extent files anywhere on the host, a qcow2 can name a backing file or an external data file,
and a "raw" image can start with another format's header (qemu-img would then probe it as
that). :func:`check_image` refuses all of these before qemu-img converts anything:
the format the descriptor declares must be the one the file's header shows, and the image must
consist of this one file. Conversions always name the source format (``-f``), never probe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmctl.appliance import Appliance, ApplianceDisk, OpenedAppliance, UnsafeAppliance
from vmctl.backend.tools import run_tool
from vmctl.errors import InvalidSpec, Unsupported
from vmctl.interface import Hypervisor
from vmctl.types import SPEC_FEATURES, MachineSpec, Network, validate_name

__all__ = [
    "appliance_name",
    "appliance_spec",
    "check_header",
    "check_image",
    "convert_disk",
    "refuse_features",
    "single_disk",
]

#: The first bytes of each format vmctl converts (raw has none).
_MAGIC = {"vmdk": (b"KDMV",), "qcow2": (b"QFI\xfb",), "vdi": (b"<<< ",)}
_QEMU_FORMATS = frozenset({"vmdk", "qcow2", "raw", "vdi"})


def appliance_name(appliance: Appliance, name: str | None) -> str:
    """``name`` if given, else the appliance's own name if vmctl accepts it as a machine name."""
    if name is not None:
        return validate_name(name)
    try:
        return validate_name(appliance.name)
    except InvalidSpec:
        raise InvalidSpec(
            "name", f"the appliance's name {appliance.name!r} is not a machine name vmctl accepts; pass name="
        ) from None


def single_disk(appliance: Appliance, backend: str) -> ApplianceDisk:
    """The appliance's one hard disk; :class:`Unsupported` for none or several (a vmctl
    machine has one disk)."""
    if len(appliance.disks) != 1:
        raise Unsupported(
            backend,
            "import_appliance",
            f"the appliance has {len(appliance.disks)} hard disks; a vmctl machine has exactly one",
        )
    disk = appliance.disks[0]
    if disk.image_format not in _QEMU_FORMATS:
        raise Unsupported(backend, "import_appliance", f"disk format {disk.format_uri!r} is not converted")
    return disk


def check_header(path: Path, declared: str) -> None:
    """Refuse (:class:`UnsafeAppliance`) an image whose header is not the format declared (a
    "vmdk" that is a text descriptor naming extents, a "raw" that starts with a qcow2 header)."""
    with open(path, "rb") as f:
        head = f.read(4)
    probed = next((fmt for fmt, magics in _MAGIC.items() if head.startswith(magics)), "raw")
    if declared == "vdi":
        with open(path, "rb") as f:
            f.seek(0x40)
            if f.read(4) != b"\x7f\x10\xda\xbe":
                probed = "raw"
    if probed != declared:
        raise UnsafeAppliance(f"{path.name} is declared {declared} but its header says {probed}")


def check_image(qemu_img: str, path: Path, declared: str, timeout: float = 60) -> int:
    """Refuse (:class:`UnsafeAppliance`) an image that is not what the descriptor declares or
    that reaches beyond its own file; return its virtual size."""
    check_header(path, declared)
    proc = run_tool([qemu_img, "info", "-U", "--output=json", "-f", declared, str(path)], timeout=timeout)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        raise UnsafeAppliance(f"qemu-img cannot read {path.name} as {declared}") from None
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeAppliance(f"{path.name} names a backing file ({info.get('backing-filename')!r})")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise UnsafeAppliance(f"{path.name} names an external data file ({data.get('data-file')!r})")
    for extent in data.get("extents", ()):
        if os.path.basename(str(extent.get("filename", ""))) != path.name:
            raise UnsafeAppliance(f"{path.name} names another file as an extent ({extent.get('filename')!r})")
    return int(info.get("virtual-size", 0))


def convert_disk(
    qemu_img: str, source: Path, source_format: str, dest: Path, timeout: float, out: str = "qcow2"
) -> None:
    """``qemu-img convert`` ``source`` (checked first) into the new image ``dest``."""
    check_image(qemu_img, source, source_format)
    run_tool([qemu_img, "convert", "-q", "-f", source_format, "-O", out, str(source), str(dest)], timeout=timeout)


def appliance_spec(
    opened: OpenedAppliance, name: str, disk: Path, overrides: Mapping[str, Any] | None = None, *, overlay: bool = True
) -> MachineSpec:
    """The :class:`MachineSpec` of the imported machine: the appliance's memory and CPUs, its
    disk at ``disk``, a NAT network if the appliance has a NIC; then ``overrides`` (fields the
    caller gave :meth:`~vmctl.Hypervisor.import_appliance`)."""
    app = opened.appliance
    values: dict[str, Any] = {
        "memory_mib": app.memory_mib,
        "cpus": app.cpus,
        "network": Network() if app.nics else None,
    }
    values.update(overrides or {})
    return MachineSpec.from_dict({**values, "name": name, "disk": disk, "overlay": overlay})


def refuse_features(hv: Hypervisor, spec: MachineSpec) -> None:
    """:class:`Unsupported` (as :meth:`~vmctl.Hypervisor.create` says it) if the backend lacks
    a feature ``spec`` needs."""
    refused = hv.capabilities.refused_features(spec)
    if refused:
        notes = hv._feature_notes
        why = "; ".join(f"{SPEC_FEATURES[f]}: {notes.get(f, 'not offered')}" for f in refused)
        raise Unsupported(hv.name, "import_appliance", why)
