"""Build OVF descriptors (with ElementTree) and OVA archives (with tarfile) for the import tests."""

from __future__ import annotations

import hashlib
import io
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
STREAM_VMDK = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
QCOW2 = "http://www.gnome.org/~markmc/qcow-image-format.html"

ET.register_namespace("ovf", OVF)
ET.register_namespace("rasd", RASD)
ET.register_namespace("vssd", VSSD)


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, f"{{{ns}}}{tag}", {f"{{{OVF}}}{k}": v for k, v in attrs.items()})
    if text is not None:
        elem.text = text
    return elem


def _item(hw: ET.Element, instance: int, kind: int, **fields: str) -> None:
    item = _sub(hw, OVF, "Item")
    for key, value in sorted({**fields, "InstanceID": str(instance), "ResourceType": str(kind)}.items()):
        _sub(item, RASD, key, value)


def descriptor(
    name: str,
    disks: Sequence[tuple[str, int, str]],
    *,
    memory_mib: int = 128,
    cpus: int = 1,
    nics: int = 1,
    file_sizes: Sequence[int | None] = (),
) -> bytes:
    """An OVF 1.0 envelope for one virtual system with ``disks`` as (href, capacity in bytes,
    format URI), as VirtualBox and ovftool lay it out."""
    env = ET.Element(f"{{{OVF}}}Envelope", {f"{{{OVF}}}version": "1.0"})
    refs = _sub(env, OVF, "References")
    section = _sub(env, OVF, "DiskSection")
    _sub(section, OVF, "Info", "Virtual disk information")
    for i, (href, capacity, uri) in enumerate(disks, 1):
        size = file_sizes[i - 1] if i - 1 < len(file_sizes) else None
        attrs = {"href": href, "id": f"file{i}", **({"size": str(size)} if size is not None else {})}
        _sub(refs, OVF, "File", **attrs)
        _sub(section, OVF, "Disk", capacity=str(capacity), diskId=f"vmdisk{i}", fileRef=f"file{i}", format=uri)
    if nics:
        net = _sub(env, OVF, "NetworkSection")
        _sub(net, OVF, "Info", "Logical networks")
        _sub(_sub(net, OVF, "Network", name="NAT"), OVF, "Description", "NAT")
    system = _sub(env, OVF, "VirtualSystem", id=name)
    _sub(system, OVF, "Info", "A virtual machine")
    hw = _sub(system, OVF, "VirtualHardwareSection")
    _sub(hw, OVF, "Info", "Virtual hardware requirements")
    sysinfo = _sub(hw, OVF, "System")
    _sub(sysinfo, VSSD, "ElementName", "Virtual Hardware Family")
    _sub(sysinfo, VSSD, "InstanceID", "0")
    _sub(sysinfo, VSSD, "VirtualSystemType", "vmx-07")
    _item(hw, 1, 3, VirtualQuantity=str(cpus), ElementName=f"{cpus} virtual CPU")
    _item(hw, 2, 4, VirtualQuantity=str(memory_mib), AllocationUnits="byte * 2^20", ElementName="memory")
    _item(hw, 3, 6, ElementName="SCSI controller 0", ResourceSubType="lsilogic", Address="0")
    for i in range(1, len(disks) + 1):
        _item(hw, 3 + i, 17, ElementName=f"disk{i}", HostResource=f"ovf:/disk/vmdisk{i}", Parent="3")
    for n in range(nics):
        _item(hw, 10 + n, 10, ElementName=f"eth{n}", Connection="NAT", ResourceSubType="E1000")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env)


def manifest(files: Sequence[tuple[str, bytes]], algorithm: str = "sha256") -> bytes:
    tag = {"sha1": "SHA1", "sha256": "SHA256"}[algorithm]
    return "".join(f"{tag}({n})= {hashlib.new(algorithm, d).hexdigest()}\n" for n, d in files).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def ova(dest: Path, ovf_name: str, ovf: bytes, files: Sequence[tuple[str, Path | bytes]], *, mf: bool = True) -> Path:
    """An OVA as the OVF spec lays it out: descriptor, manifest (SHA-256 of each), then the files."""
    contents = [(n, f.read_bytes() if isinstance(f, Path) else f) for n, f in files]
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        add_bytes(tar, ovf_name, ovf)
        if mf:
            add_bytes(tar, ovf_name[: -len(".ovf")] + ".mf", manifest([(ovf_name, ovf), *contents]))
        for name, data in contents:
            add_bytes(tar, name, data)
    return dest
