"""Domain, snapshot and volume XML, built and read with ElementTree (never string templates)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from vmctl.types import MachineSpec, Snapshot

#: The namespace of vmctl's element in a domain's <metadata>; its presence marks a domain as vmctl's.
NS = "urn:vmctl:machine:1"
NS_PREFIX = "vmctl"
#: A second element, present while a crashed domain has been powered off (see _machine.py).
NS_CRASH_ACK = "urn:vmctl:crash-acknowledged:1"
#: User alias of the one NIC (libvirt names its netdev "host" + alias).
NIC_ALIAS = "ua-vmctl-net0"

ET.register_namespace(NS_PREFIX, NS)


@dataclass(frozen=True)
class Backing:
    """The base image under an overlay: where it is and its format."""

    path: str
    format: str
    #: the base has no backing file of its own, so the chain can be spelled out in full
    standalone: bool


@dataclass(frozen=True)
class DomainPlan:
    """Everything the domain XML needs besides the spec."""

    domain_type: str  # "qemu", "kvm", "test"
    uuid: str
    disk_path: str | None
    disk_format: str
    backing: Backing | None
    metadata: dict[str, Any]
    machine_type: str | None = "q35"
    #: the format of each of ``spec.extra_disks``, in order
    extra_disk_formats: tuple[str, ...] = ()


def _parse(text: str) -> ET.Element:
    # The XML comes from the libvirt daemon the user chose to connect to; Python's expat refuses
    # external entities and bounds entity expansion, which is what defusedxml would add.
    return ET.fromstring(text)  # noqa: S314


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: MachineSpec, plan: DomainPlan) -> str:
    """The persistent definition of a vmctl machine."""
    dom = ET.Element("domain", type=plan.domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", plan.uuid)
    _sub(dom, "description", "created by vmctl")
    meta = _sub(dom, "metadata")
    _sub(meta, f"{{{NS}}}machine", json.dumps(plan.metadata, sort_keys=True))
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))

    os_el = _sub(dom, "os")
    type_attrs = {"arch": "x86_64"}
    if plan.machine_type:
        type_attrs["machine"] = plan.machine_type
    _sub(os_el, "type", "hvm", **type_attrs)
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        if spec.cmdline is not None:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        for dev in ("cdrom", "hd") if spec.boot_from_cdrom else ("hd", "cdrom") if spec.cdrom is not None else ("hd",):
            _sub(os_el, "boot", dev=dev)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    # A crashed guest becomes "shut off, reason crashed": vmctl's CRASHED, which start boots afresh.
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    if plan.disk_path is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=plan.disk_format)
        _sub(disk, "source", file=plan.disk_path)
        if plan.backing is not None and plan.backing.standalone:
            # Spelled out so that libvirt does not relabel (chown) the shared base image: it is
            # only read, and other machines and users may use it too.
            store = _sub(disk, "backingStore", type="file")
            _sub(store, "format", type=plan.backing.format)
            source = _sub(store, "source", file=plan.backing.path)
            _sub(source, "seclabel", model="dac", relabel="no")
            _sub(store, "backingStore")
        _sub(disk, "target", dev="vda", bus="virtio")
    _media(devices, spec, plan)
    for tag, directory in spec.shared_dirs.items():
        # "mapped": modes, owners, links and special files the guest makes are metadata
        # (xattrs) on plain files, never a host symlink, device node or setuid file
        fs = _sub(devices, "filesystem", type="mount", accessmode="mapped")
        _sub(fs, "driver", type="path")
        _sub(fs, "source", dir=str(directory))
        _sub(fs, "target", dir=tag)
        if tag in spec.readonly_shares:
            _sub(fs, "readonly")
    if spec.network is not None:
        nic = _sub(devices, "interface", type="user")
        _sub(nic, "model", type="virtio")
        _sub(nic, "link", state="up")
        _sub(nic, "alias", name=NIC_ALIAS)
    serial = _sub(devices, "serial", type="file" if spec.serial_log is not None else "pty")
    if spec.serial_log is not None:
        _sub(serial, "source", path=str(spec.serial_log), append="on")
    _sub(serial, "target", port="0")
    # a display adapter with no display (libvirt runs QEMU with -display none): what
    # virDomainScreenshot reads
    _sub(_sub(devices, "video"), "model", type="vga")
    if plan.domain_type != "test":
        _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def _media(devices: ET.Element, spec: MachineSpec, plan: DomainPlan) -> None:
    """The extra disks (virtio, each file as it is), the CD-ROM (read-only, SATA: q35's AHCI) and
    the floppy (raw, drive A). None of them is relabelled: they are the caller's files, which
    QEMU opens as the user libvirt runs it as (see ``check_reachable``)."""
    if len(plan.extra_disk_formats) != len(spec.extra_disks):
        raise ValueError("one format for each extra disk")
    for index, (path, fmt) in enumerate(zip(spec.extra_disks, plan.extra_disk_formats, strict=True)):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=fmt)
        _sub(disk, "source", file=str(path))
        _sub(disk, "target", dev=f"vd{chr(ord('b') + index)}", bus="virtio")
    if spec.cdrom is not None:
        disk = _sub(devices, "disk", type="file", device="cdrom")
        _sub(disk, "driver", name="qemu", type="raw")
        source = _sub(disk, "source", file=str(spec.cdrom))
        _sub(source, "seclabel", model="dac", relabel="no")
        _sub(disk, "target", dev="sda", bus="sata")
        _sub(disk, "readonly")
    if spec.floppy is not None:
        disk = _sub(devices, "disk", type="file", device="floppy")
        _sub(disk, "driver", name="qemu", type="raw")
        _sub(disk, "source", file=str(spec.floppy))
        _sub(disk, "target", dev="fda", bus="fdc")


def metadata_json(element_xml: str) -> dict[str, Any]:
    """The JSON object inside vmctl's metadata element (as returned by virDomainGetMetadata)."""
    el = _parse(element_xml)
    data = json.loads(el.text or "{}")
    if not isinstance(data, dict):
        raise ValueError("vmctl metadata is not a JSON object")
    return data


def crash_ack_xml() -> str:
    return ET.tostring(ET.Element("acknowledged"), encoding="unicode")


def snapshot_xml(name: str, description: str) -> str:
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    if description:
        _sub(snap, "description", description)
    return ET.tostring(snap, encoding="unicode")


def parse_snapshot(xml: str) -> Snapshot:
    """A vmctl Snapshot from libvirt's snapshot XML; memory is in it unless it was taken shut off."""
    root = _parse(xml)
    state = root.findtext("state") or ""
    memory = root.find("memory")
    has_memory = state not in ("shutoff", "crashed", "disk-snapshot") and (
        memory is None or memory.get("snapshot") != "no"
    )
    return Snapshot(
        name=root.findtext("name") or "",
        created=float(root.findtext("creationTime") or 0),
        has_memory=has_memory,
        description=root.findtext("description") or "",
        parent=root.findtext("parent/name"),
    )


def set_link_state(domain_xml_text: str, up: bool, nic_alias: str | None = NIC_ALIAS) -> str | None:
    """The <interface> element of the vmctl NIC (``nic_alias``; None: the first NIC, that of an
    adopted domain) with its link state changed, or None if absent."""
    root = _parse(domain_xml_text)
    for nic in root.iterfind("devices/interface"):
        alias = nic.find("alias")
        if nic_alias is not None and (alias is None or alias.get("name") != nic_alias):
            continue
        link = nic.find("link")
        if link is None:
            link = _sub(nic, "link")
        link.set("state", "up" if up else "down")
        return ET.tostring(nic, encoding="unicode")
    return None


def netdev_id(domain_xml_text: str) -> str | None:
    """QEMU's netdev id of the vmctl NIC in a live domain."""
    root = _parse(domain_xml_text)
    for nic in root.iterfind("devices/interface"):
        alias = nic.find("alias")
        if alias is not None and alias.get("name", "").startswith(NIC_ALIAS):
            return "host" + alias.get("name", "")
    return None


def volume_xml(name: str, capacity: int, backing: Backing) -> str:
    """A qcow2 volume whose backing store is ``backing`` (for storageVolCreateXML)."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type="qcow2")
    _sub(target, "permissions").append(_perm("mode", "0600"))
    store = _sub(vol, "backingStore")
    _sub(store, "path", backing.path)
    _sub(store, "format", type=backing.format)
    return ET.tostring(vol, encoding="unicode")


def _perm(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


def volume_info(xml: str) -> tuple[int, str, bool]:
    """(capacity in bytes, format, has a backing store) from a storage volume's XML."""
    root = _parse(xml)
    capacity_el = root.find("capacity")
    unit = capacity_el.get("unit", "bytes") if capacity_el is not None else "bytes"
    value = int((capacity_el.text or "0") if capacity_el is not None else 0)
    scale = {"bytes": 1, "b": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}.get(unit, 1)
    fmt_el = root.find("target/format")
    fmt = fmt_el.get("type", "raw") if fmt_el is not None else "raw"
    return value * scale, fmt, root.find("backingStore/path") is not None


def pool_xml(name: str, path: str) -> str:
    pool = ET.Element("pool", type="dir")
    _sub(pool, "name", name)
    target = _sub(pool, "target")
    _sub(target, "path", path)
    perms = _sub(target, "permissions")
    _sub(perms, "mode", "0711")
    return ET.tostring(pool, encoding="unicode")
