"""Domains vmctl did not create: their spec read from the domain XML, their disks found in it.

A domain defined with ``virsh define``, virt-manager or any other tool carries no vmctl metadata.
vmctl opens it all the same (``hv.machine(name)``) and reads a :class:`~vmctl.types.MachineSpec`
from its XML as far as the spec can say it: memory, CPUs, the first disk (a qcow2 overlay with
a ``<backingStore>`` becomes ``disk=<backing file>, overlay=True``; any other disk
``disk=<file>, overlay=False``), direct kernel boot, a NIC (as ``Network()``: libvirt's forwards
are not vmctl's), ``<filesystem>`` shares and a file-backed serial console.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from typing import Any

from vmctl.backend.records import spec_from_record
from vmctl.types import MAX_CPUS, MAX_MEMORY_MIB, MachineSpec

from ._xml import _parse

__all__ = ["disk_files", "has_nvram", "spec_from_domain"]

log = logging.getLogger("vmctl.libvirt")

_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}")
_UNITS = {
    "b": 1,
    "bytes": 1,
    "KB": 10**3,
    "k": 1024,
    "KiB": 1024,
    "MB": 10**6,
    "M": 1 << 20,
    "MiB": 1 << 20,
    "GB": 10**9,
    "G": 1 << 30,
    "GiB": 1 << 30,
    "TB": 10**12,
    "T": 1 << 40,
    "TiB": 1 << 40,
}


def _mib(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip().isdigit():
        return 256
    scale = _UNITS.get(el.get("unit", "KiB"), 1024)
    return max(1, min(MAX_MEMORY_MIB, int(el.text or "0") * scale // (1 << 20)))


def _source(disk: ET.Element) -> str | None:
    source = disk.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("dev")


def disk_files(xml: str) -> list[str]:
    """The image files and block devices of the domain's disks (CD-ROMs and floppies left out)."""
    root = _parse(xml)
    found = []
    for disk in root.iterfind("devices/disk"):
        if disk.get("device", "disk") != "disk" or disk.get("type") not in ("file", "block"):
            continue
        path = _source(disk)
        if path:
            found.append(path)
    return found


def has_nvram(xml: str) -> bool:
    """The domain keeps UEFI variables in an NVRAM file (or has firmware that may make one)."""
    os_el = _parse(xml).find("os")
    return os_el is not None and (os_el.find("nvram") is not None or os_el.get("firmware") is not None)


def spec_from_domain(xml: str) -> MachineSpec:
    """The spec of a domain vmctl did not create, read from its (inactive) XML."""
    root = _parse(xml)
    data: dict[str, Any] = {"name": root.findtext("name") or ""}
    data["memory_mib"] = _mib(root.find("memory"))
    vcpu = (root.findtext("vcpu") or "1").strip()
    data["cpus"] = max(1, min(MAX_CPUS, int(vcpu))) if vcpu.isdigit() else 1
    for key, where in (("kernel", "os/kernel"), ("initrd", "os/initrd"), ("cmdline", "os/cmdline")):
        text = root.findtext(where)
        if text:
            data[key] = text
    if "kernel" not in data:
        data.pop("initrd", None)
        data.pop("cmdline", None)
    for disk in root.iterfind("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        path = _source(disk)
        if not path:
            continue
        backing = disk.find("backingStore/source")
        base = backing.get("file") or backing.get("dev") if backing is not None else None
        if base:
            data["disk"], data["overlay"] = base, True
        else:
            data["disk"], data["overlay"] = path, False
        break
    if root.find("devices/interface") is not None:
        data["network"] = {"port_forwards": []}
    shared: dict[str, str] = {}
    readonly: list[str] = []
    for fs in root.iterfind("devices/filesystem"):
        source = fs.find("source")
        target = fs.find("target")
        directory = source.get("dir") if source is not None else None
        tag = target.get("dir") if target is not None else None
        if fs.get("type", "mount") != "mount" or not directory or not tag:
            continue
        if not _TAG_RE.fullmatch(tag):
            log.info("%s: share tag %r is not one vmctl can name; left out of the spec", data["name"], tag)
            continue
        shared[tag] = directory
        if fs.find("readonly") is not None:
            readonly.append(tag)
    if shared:
        data["shared_dirs"] = shared
    if readonly:
        data["readonly_shares"] = readonly
    for serial in root.iterfind("devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            data["serial_log"] = source.get("path")
            break
    return spec_from_record(data, adopted=True)
