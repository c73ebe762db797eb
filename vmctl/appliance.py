"""OVF appliances: read an OVF descriptor, unpack an OVA, check its manifest; for every backend.

An appliance is a *descriptor* (``.ovf``, XML, DMTF DSP0243) naming the virtual hardware of one
virtual system (memory, CPUs, disks, NICs) and the files it needs, shipped either as an ``.ovf``
with its files beside it or as an ``.ova``: one tar holding the descriptor first, then an
optional manifest (``.mf``, a checksum per file), then the files. Both come from strangers, so:

- the descriptor is read only up to :data:`MAX_DESCRIPTOR_BYTES`, and refused if it has a
  document type declaration (the only way to declare entities: no "billion laughs", no external
  entity pointing at a host file or URL); the parse is expat's, with no network;
- an OVA is unpacked into a private directory (mode 0700) made for it, and only the files the
  descriptor references and the manifest are written there: a member whose name is absolute or
  has a ``..`` component, a link (symbolic or hard), a device, a FIFO, a file bigger than
  ``max_bytes`` or than the free space left is refused with :class:`UnsafeAppliance` before
  anything of it is written, and each file is created with ``O_EXCL|O_NOFOLLOW``;
- an ``.ovf``'s files must be regular files inside the descriptor's directory (no link, no
  ``..``, no URL: vmctl fetches nothing);
- where a manifest is present, every file it lists must match its SHA-1/SHA-256/SHA-512 digest
  (:class:`ManifestMismatch` otherwise), and the descriptor itself must be listed in it.

>>> ovf = '''<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
...   xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
...   xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
...  <References><File ovf:id="f1" ovf:href="disk.vmdk"/></References>
...  <DiskSection><Info/><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"
...    ovf:capacityAllocationUnits="byte * 2^30"
...    ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
...  <VirtualSystem ovf:id="web"><Info/><VirtualHardwareSection><Info/>
...   <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
...   <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
...    <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
...   <Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
...  </VirtualHardwareSection></VirtualSystem></Envelope>'''
>>> app = parse_descriptor(ovf.encode())
>>> app.name, app.memory_mib, app.cpus
('web', 512, 2)
>>> d = app.disks[0]
>>> d.href, d.capacity_bytes, d.image_format, d.subformat
('disk.vmdk', 1073741824, 'vmdk', 'streamOptimized')
>>> parse_descriptor(b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>')
Traceback (most recent call last):
...
vmctl.appliance.UnsafeAppliance: invalid appliance: the descriptor has a document type declaration ...
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO
from xml.parsers import expat

from vmctl.errors import InvalidSpec

__all__ = [
    "MAX_DESCRIPTOR_BYTES",
    "Appliance",
    "ApplianceDisk",
    "ApplianceNic",
    "InvalidAppliance",
    "ManifestMismatch",
    "OpenedAppliance",
    "UnsafeAppliance",
    "UnsupportedAppliance",
    "open_appliance",
    "parse_descriptor",
    "parse_manifest",
]

#: A descriptor (and a manifest) larger than this is refused; real ones are a few to tens of KiB.
MAX_DESCRIPTOR_BYTES = 4 << 20
#: Default bound of one file taken out of an OVA (and of their sum); ``max_bytes`` changes it.
DEFAULT_MAX_BYTES = 256 << 30
#: At most this many members are looked at in an OVA (OVF packages have a handful).
MAX_MEMBERS = 1000
_CHUNK = 1 << 20

_OVF_NS = ("http://schemas.dmtf.org/ovf/envelope/1", "http://schemas.dmtf.org/ovf/envelope/2")
_CPU, _MEMORY, _ETHERNET, _DISK, _CD, _DVD = "3", "4", "10", "17", "15", "16"

_VMDK_URI = re.compile(r"https?://www\.vmware\.com/(?:interfaces/)?specifications/vmdk\.html(?:#(\w+))?", re.I)
_FORMAT_URIS = {
    "http://www.gnome.org/~markmc/qcow-image-format.html": "qcow2",
    "http://www.gnome.org/~markmc/qcow-image-format-version-1.html": "qcow",
    "http://www.virtualbox.org/ovf/machine/disk/vdi": "vdi",
    "http://www.ecma-international.org/publications/standards/Ecma-119.htm": "iso",
}
_DIGESTS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_MF_LINE = re.compile(r"(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)")
_UNITS = re.compile(r"byte(?:s)?(?:\s*\*\s*(\d+)\s*\^\s*(-?\d+))?", re.I)
_NAMED_UNITS = {"bytes": 1, "kilobytes": 1 << 10, "megabytes": 1 << 20, "gigabytes": 1 << 30, "kb": 1 << 10,
                "mb": 1 << 20, "gb": 1 << 30}  # fmt: skip


class InvalidAppliance(InvalidSpec):
    """The OVF descriptor or OVA is malformed, or says something vmctl cannot use; nothing was
    created. ``problem`` says what."""

    def __init__(self, problem: str) -> None:
        super().__init__("appliance", problem)


class UnsafeAppliance(InvalidAppliance):
    """The appliance tries something vmctl never does for a stranger's file: a DTD or entity
    in the descriptor, a tar member outside the unpack directory, a link, a device, a size past
    the bound. Nothing of it was written outside vmctl's private unpack directory."""


class ManifestMismatch(InvalidAppliance):
    """A file's digest is not the one the appliance's manifest (``.mf``) lists, or a file the
    manifest lists is missing."""

    def __init__(self, file: str, reason: str) -> None:
        self.file = file
        self.reason = reason
        super().__init__(f"manifest check of {file!r} failed: {reason}")


class UnsupportedAppliance(InvalidAppliance):
    """The appliance is valid OVF but uses what vmctl does not implement (several virtual
    systems, chunked or compressed files, remote file references, a disk format qemu-img and
    the backends do not read)."""


@dataclass(frozen=True)
class ApplianceDisk:
    """One virtual hard disk of the appliance, in the order the hardware section attaches them."""

    disk_id: str
    href: str
    """The file's name relative to the descriptor (``File/@ovf:href``)."""
    capacity_bytes: int
    format_uri: str
    image_format: str
    """The qemu-img format name the URI means (``vmdk``, ``qcow2``, ``raw``, ``vdi``)."""
    subformat: str | None = None
    """``streamOptimized``, ``monolithicSparse``, ... for a VMDK, where the URI says it."""
    file_size: int | None = None


@dataclass(frozen=True)
class ApplianceNic:
    """One network adapter: the logical network it connects to and the adapter model, if named."""

    network: str | None
    model: str | None


@dataclass(frozen=True)
class Appliance:
    """What an OVF descriptor describes, as far as vmctl uses it."""

    name: str
    """The virtual system's ``ovf:id`` (or its ``Name``)."""
    memory_mib: int
    cpus: int
    disks: tuple[ApplianceDisk, ...]
    nics: tuple[ApplianceNic, ...] = ()
    os_type: str | None = None
    """The guest OS as the descriptor names it (``vbox:OSType``, ``vmw:osType``, or the CIM id)."""
    cdroms: tuple[str, ...] = ()
    """Files attached as CD/DVD images (hrefs); vmctl imports hard disks only."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Every referenced file: id -> href."""


# -- the descriptor ------------------------------------------------------------------------------
def _refuse_dtd(*_: object) -> None:
    raise UnsafeAppliance(
        "the descriptor has a document type declaration (<!DOCTYPE>), which OVF never needs and "
        "which could declare entities"
    )


def _parse_xml(data: bytes) -> ET.Element:
    """The root of ``data`` after expat refused any DTD (and so any entity but XML's five)."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise UnsafeAppliance(f"the descriptor is larger than {MAX_DESCRIPTOR_BYTES} bytes")
    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = _refuse_dtd
    scan.EntityDeclHandler = _refuse_dtd
    scan.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        scan.Parse(data, True)
    except expat.ExpatError as exc:
        raise InvalidAppliance(f"the descriptor is not well-formed XML: {exc}") from None
    # The same bytes, now known to have no DTD: ElementTree builds the tree.
    return ET.fromstring(data)  # noqa: S314


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if isinstance(c.tag, str) and _local(c.tag) == name]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    found = _children(elem, name)
    return found[0] if found else None


def _attr(elem: ET.Element, name: str) -> str | None:
    for ns in _OVF_NS:
        value = elem.get(f"{{{ns}}}{name}")
        if value is not None:
            return value
    return elem.get(name)


def _text(elem: ET.Element, name: str) -> str | None:
    child = _child(elem, name)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _int(value: str | None, what: str) -> int:
    if value is None or not re.fullmatch(r"\s*\d{1,20}\s*", value):
        raise InvalidAppliance(f"{what} is {value!r}, not a whole number")
    return int(value)


def unit_bytes(units: str | None, default: int) -> int:
    """Bytes in one of ``units`` (DMTF programmatic units such as ``byte * 2^20``, or the names
    VirtualBox writes such as ``MegaBytes``); ``default`` where the descriptor names none.

    >>> unit_bytes("byte * 2^20", 1), unit_bytes("MegaBytes", 1), unit_bytes(None, 1 << 20)
    (1048576, 1048576, 1048576)
    """
    if units is None or not units.strip():
        return default
    text = units.strip()
    named = _NAMED_UNITS.get(text.lower())
    if named is not None:
        return named
    match = _UNITS.fullmatch(text)
    if match is None:
        raise UnsupportedAppliance(f"allocation units {units!r} are not a byte unit vmctl reads")
    if match.group(1) is None:
        return 1
    base, exp = int(match.group(1)), int(match.group(2))
    if base not in (2, 10) or not 0 <= exp <= 60:
        raise UnsupportedAppliance(f"allocation units {units!r} are out of range")
    return int(base**exp)


def _disk_format(uri: str) -> tuple[str, str | None]:
    vmdk = _VMDK_URI.fullmatch(uri.strip())
    if vmdk:
        return "vmdk", vmdk.group(1)
    fmt = _FORMAT_URIS.get(uri.strip())
    if fmt is None:
        raise UnsupportedAppliance(f"disk format {uri!r} is not one vmctl imports")
    return fmt, None


def _check_href(href: str) -> str:
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", href):
        raise UnsupportedAppliance(f"file reference {href!r} is a URL: vmctl fetches nothing")
    path = PurePosixPath(href)
    if (
        not href
        or "\\" in href
        or "\x00" in href
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in href.split("/"))
    ):
        raise UnsafeAppliance(f"file reference {href!r} is not a plain relative path inside the appliance")
    return href


def parse_descriptor(data: bytes) -> Appliance:
    """The :class:`Appliance` an OVF descriptor describes (OVF 1.x and 2.0 envelopes).

    Raises :class:`UnsafeAppliance` for a DTD or an oversized descriptor,
    :class:`UnsupportedAppliance` for what vmctl does not implement, :class:`InvalidAppliance`
    for anything else wrong.
    """
    root = _parse_xml(data)
    if _local(root.tag) != "Envelope" or root.tag.partition("}")[0].lstrip("{") not in _OVF_NS:
        raise InvalidAppliance("the document is not an OVF Envelope (namespace http://schemas.dmtf.org/ovf/envelope/1)")
    files: dict[str, str] = {}
    sizes: dict[str, int | None] = {}
    refs = _child(root, "References")
    for f in _children(refs, "File") if refs is not None else []:
        fid, href = _attr(f, "id"), _attr(f, "href")
        if not fid or href is None:
            raise InvalidAppliance("a References/File lacks ovf:id or ovf:href")
        if fid in files:
            raise InvalidAppliance(f"file id {fid!r} is declared twice")
        if _attr(f, "chunkSize") is not None:
            raise UnsupportedAppliance(f"file {href!r} is split in chunks (ovf:chunkSize)")
        if (_attr(f, "compression") or "identity") != "identity":
            raise UnsupportedAppliance(f"file {href!r} is compressed ({_attr(f, 'compression')})")
        files[fid] = _check_href(href)
        size = _attr(f, "size")
        sizes[fid] = None if size is None else _int(size, f"the size of file {href!r}")
    disks: dict[str, ApplianceDisk | tuple[str, str]] = {}
    section = _child(root, "DiskSection")
    for d in _children(section, "Disk") if section is not None else []:
        did, ref, uri = _attr(d, "diskId"), _attr(d, "fileRef"), _attr(d, "format")
        if not did or not uri:
            raise InvalidAppliance("a DiskSection/Disk lacks ovf:diskId or ovf:format")
        if ref is None:
            raise UnsupportedAppliance(f"disk {did!r} has no file (an empty disk to create)")
        if ref not in files:
            raise InvalidAppliance(f"disk {did!r} names file {ref!r}, which References does not declare")
        fmt, sub = _disk_format(uri)
        if fmt == "iso":  # VirtualBox lists CD images among the disks
            disks[did] = (files[ref], "iso")
            continue
        units = unit_bytes(_attr(d, "capacityAllocationUnits"), 1)
        capacity = _int(_attr(d, "capacity"), f"the capacity of disk {did!r}") * units
        disks[did] = ApplianceDisk(did, files[ref], capacity, uri, fmt, sub, sizes[ref])
    systems = _children(root, "VirtualSystem")
    if _child(root, "VirtualSystemCollection") is not None or len(systems) > 1:
        raise UnsupportedAppliance("the appliance has several virtual systems; vmctl imports one machine")
    if not systems:
        raise InvalidAppliance("the descriptor has no VirtualSystem")
    system = systems[0]
    name = _attr(system, "id") or _text(system, "Name") or ""
    hardware = _children(system, "VirtualHardwareSection")
    if not hardware:
        raise InvalidAppliance("the virtual system has no VirtualHardwareSection")
    memory_mib: int | None = None
    cpus: int | None = None
    attached: list[ApplianceDisk] = []
    cdroms: list[str] = []
    nics: list[ApplianceNic] = []
    for item in [i for h in hardware for i in h if isinstance(i.tag, str) and _local(i.tag).endswith("Item")]:
        if _attr(item, "configuration") is not None:
            continue  # an alternative of a DeploymentOptionSection: the default one is kept
        kind = _text(item, "ResourceType")
        if kind == _CPU:
            cpus = _int(_text(item, "VirtualQuantity"), "the CPU count")
        elif kind == _MEMORY:
            qty = _int(_text(item, "VirtualQuantity"), "the memory size")
            total = qty * unit_bytes(_text(item, "AllocationUnits"), 1 << 20)
            memory_mib = -(-total // (1 << 20))
        elif kind == _ETHERNET:
            nics.append(ApplianceNic(_text(item, "Connection"), _text(item, "ResourceSubType")))
        elif kind in (_DISK, _CD, _DVD):
            resource = _text(item, "HostResource")
            if not resource:
                continue  # an empty drive
            target = resource.removeprefix("ovf:").removeprefix("/")
            group, _, ident = target.partition("/")
            if group == "disk" and ident in disks:
                disk = disks[ident]
                if isinstance(disk, tuple):
                    cdroms.append(disk[0])
                elif kind == _DISK:
                    attached.append(disk)
                else:
                    raise UnsupportedAppliance(f"disk {ident!r} is attached as a CD/DVD drive")
            elif group == "file" and ident in files:
                if kind == _DISK:
                    raise UnsupportedAppliance(f"hard disk {resource!r} names a file, not a DiskSection disk")
                cdroms.append(files[ident])
            else:
                raise InvalidAppliance(f"drive {resource!r} names no disk or file of the descriptor")
    if memory_mib is None or cpus is None:
        missing = "memory size" if memory_mib is None else "CPU count"
        raise InvalidAppliance(f"the hardware section gives no {missing}")
    if not attached:
        attached = [d for d in disks.values() if isinstance(d, ApplianceDisk)]
    if len({d.disk_id for d in attached}) != len(attached):
        raise InvalidAppliance("a disk is attached twice")
    os_type = None
    os_section = _child(system, "OperatingSystemSection")
    if os_section is not None:
        vmw = next((v for k, v in os_section.attrib.items() if _local(k) == "osType"), None)
        os_type = _text(os_section, "OSType") or vmw or _attr(os_section, "id")
    return Appliance(
        name=name,
        memory_mib=memory_mib,
        cpus=cpus,
        disks=tuple(attached),
        nics=tuple(nics),
        os_type=os_type,
        cdroms=tuple(cdroms),
        files=dict(files),
    )


def parse_manifest(text: str) -> dict[str, tuple[str, str]]:
    """``{file name: (hashlib algorithm, lowercase hex digest)}`` from a ``.mf`` manifest.

    >>> parse_manifest("SHA256(a.ovf)= AB12\\nSHA1(disk.vmdk)= 00ff\\n")
    {'a.ovf': ('sha256', 'ab12'), 'disk.vmdk': ('sha1', '00ff')}
    """
    entries: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MF_LINE.fullmatch(line.strip())
        if match is None:
            raise InvalidAppliance(f"manifest line {number} is not 'SHA1|SHA256|SHA512(file)= digest'")
        algorithm, name, digest = match.groups()
        entries[name.strip()] = (_DIGESTS[algorithm], digest.lower())
    return entries


# -- opening an OVA or an OVF --------------------------------------------------------------------
@dataclass
class OpenedAppliance:
    """An appliance ready to import: its description and the local path of each disk's file
    (inside :attr:`workdir` for an OVA, beside the descriptor for an OVF)."""

    appliance: Appliance
    disk_paths: dict[str, Path]
    source: Path
    workdir: Path | None
    """The private unpack directory (OVA only); deleted when the ``with`` block ends."""
    packaged: bool
    """True for an OVA: the disk files are vmctl's to move or delete."""
    descriptor: Path
    """The descriptor's path: the ``.ovf`` given, or its copy in :attr:`workdir` (beside the
    disk files unpacked) for an OVA."""


def _read_bounded(stream: IO[bytes], limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise UnsafeAppliance(f"{what} is larger than {limit} bytes")
    return data


def _verify(name: str, digest: str, algorithm: str, expected: Mapping[str, tuple[str, str]]) -> None:
    want = expected.get(name)
    if want is None:
        return
    if want[0] != algorithm:
        raise InvalidAppliance(f"internal: {name} hashed with {algorithm}, manifest uses {want[0]}")
    if digest != want[1]:
        raise ManifestMismatch(name, f"{want[0]} is {digest}, the manifest says {want[1]}")


def _manifest_check(descriptor_name: str, descriptor: bytes, manifest: dict[str, tuple[str, str]]) -> None:
    if descriptor_name not in manifest:
        raise ManifestMismatch(descriptor_name, "the manifest does not list the descriptor")
    algorithm = manifest[descriptor_name][0]
    _verify(descriptor_name, hashlib.new(algorithm, descriptor).hexdigest(), algorithm, manifest)


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _safe_member(member: tarfile.TarInfo) -> str:
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeAppliance(f"OVA member {name!r} is a link (to {member.linkname!r}); links are not followed")
    if not (member.isreg() or member.isdir()):
        raise UnsafeAppliance(f"OVA member {name!r} is a device, FIFO or other special file")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UnsafeAppliance(f"OVA member {name!r} points outside the appliance (absolute or '..')")
    return "/".join(p for p in path.parts if p != ".")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, algorithm: str | None) -> str | None:
    """Copy exactly ``member.size`` bytes into the new file ``dest``; the hex digest if asked."""
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeAppliance(f"OVA member {member.name!r} has no data")
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.new(algorithm) if algorithm else None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, source:
        left = member.size
        while left > 0:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise InvalidAppliance(f"OVA member {member.name!r} is cut short")
            out.write(chunk)
            if digest is not None:
                digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest() if digest is not None else None


def _open_ova(path: Path, workdir: Path, max_bytes: int) -> tuple[Appliance, dict[str, Path], Path]:
    try:
        tar = tarfile.open(path, mode="r:")  # an OVA is a plain (uncompressed) tar
    except (tarfile.TarError, OSError) as exc:
        raise InvalidAppliance(f"{path} is not an OVA (a tar archive): {exc}") from None
    with tar:
        members: list[tarfile.TarInfo] = []
        try:
            for member in tar:
                members.append(member)
                if member.size > max_bytes:  # before tarfile seeks past it to the next header
                    raise UnsafeAppliance(
                        f"OVA member {member.name!r} declares {member.size} bytes, past the bound {max_bytes}"
                    )
                if len(members) > MAX_MEMBERS:
                    raise UnsafeAppliance(f"the OVA has more than {MAX_MEMBERS} members")
        except tarfile.TarError as exc:
            raise InvalidAppliance(f"{path} is not a readable tar archive: {exc}") from None
        by_name: dict[str, tarfile.TarInfo] = {}
        for member in members:
            name = _safe_member(member)
            if member.isdir():
                continue
            if name in by_name:
                raise UnsafeAppliance(f"OVA member {name!r} appears twice")
            by_name[name] = member
        descriptors = [m for m in members if m.isreg() and m.name.endswith(".ovf")]
        if len(descriptors) != 1:
            raise InvalidAppliance(f"the OVA holds {len(descriptors)} .ovf descriptors; it must hold one")
        ovf_member = descriptors[0]
        if ovf_member.size > MAX_DESCRIPTOR_BYTES:
            raise UnsafeAppliance(f"the descriptor is larger than {MAX_DESCRIPTOR_BYTES} bytes")
        stream = tar.extractfile(ovf_member)
        assert stream is not None
        descriptor = _read_bounded(stream, MAX_DESCRIPTOR_BYTES, "the descriptor")
        appliance = parse_descriptor(descriptor)
        ovf_name = _safe_member(ovf_member)
        manifest: dict[str, tuple[str, str]] = {}
        mf_name = ovf_name[: -len(".ovf")] + ".mf"
        if mf_name in by_name:
            mf = by_name[mf_name]
            if mf.size > MAX_DESCRIPTOR_BYTES:
                raise UnsafeAppliance(f"the manifest is larger than {MAX_DESCRIPTOR_BYTES} bytes")
            mf_stream = tar.extractfile(mf)
            assert mf_stream is not None
            mf_text = _read_bounded(mf_stream, MAX_DESCRIPTOR_BYTES, "the manifest").decode("utf-8", "replace")
            manifest = parse_manifest(mf_text)
            _manifest_check(ovf_name, descriptor, manifest)
        needed = {d.href for d in appliance.disks}
        total = 0
        for href in sorted(needed):
            found = by_name.get(href)
            if found is None:
                raise InvalidAppliance(f"the OVA has no file {href!r}, which the descriptor references")
            total += found.size
            if found.size > max_bytes or total > max_bytes:
                raise UnsafeAppliance(f"OVA member {href!r} declares {found.size} bytes, past the bound {max_bytes}")
            if total > _free_bytes(workdir):
                raise UnsafeAppliance(f"OVA member {href!r} declares {found.size} bytes, more than {workdir} has free")
        disk_paths: dict[str, Path] = {}
        for href in sorted(needed):
            member = by_name[href]
            algorithm = manifest[href][0] if href in manifest else None
            dest = workdir / href
            digest = _extract(tar, member, dest, algorithm)
            if algorithm is not None and digest is not None:
                _verify(href, digest, algorithm, manifest)
            for disk in appliance.disks:
                if disk.href == href:
                    disk_paths[disk.disk_id] = dest
        descriptor_path = workdir / ovf_name
        if ovf_name in needed:
            raise InvalidAppliance(f"the descriptor {ovf_name!r} names itself as a disk")
        descriptor_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(descriptor_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(descriptor)
        return appliance, disk_paths, descriptor_path


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_ovf(path: Path) -> tuple[Appliance, dict[str, Path]]:
    with open(path, "rb") as f:
        descriptor = _read_bounded(f, MAX_DESCRIPTOR_BYTES, "the descriptor")
    appliance = parse_descriptor(descriptor)
    directory = path.parent.resolve()
    manifest: dict[str, tuple[str, str]] = {}
    mf = path.with_suffix(".mf")
    if mf.is_file():
        with open(mf, "rb") as f:
            manifest = parse_manifest(_read_bounded(f, MAX_DESCRIPTOR_BYTES, "the manifest").decode("utf-8", "replace"))
        _manifest_check(path.name, descriptor, manifest)
    disk_paths: dict[str, Path] = {}
    for disk in appliance.disks:
        file = directory / disk.href
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise InvalidAppliance(f"{file} is missing (the descriptor references {disk.href!r})") from None
        if not stat.S_ISREG(st.st_mode) or not file.resolve().is_relative_to(directory):
            raise UnsafeAppliance(f"{file} is not a regular file inside {directory} (links are not followed)")
        if disk.href in manifest:
            algorithm = manifest[disk.href][0]
            _verify(disk.href, _hash_file(file, algorithm), algorithm, manifest)
        disk_paths[disk.disk_id] = file
    return appliance, disk_paths


@contextlib.contextmanager
def open_appliance(
    path: str | os.PathLike[str], workdir: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[OpenedAppliance]:
    """Open an ``.ova`` (unpacked into a private directory made under ``workdir``, default the
    system's temporary directory, and deleted when the block ends) or an ``.ovf`` (its files
    used where they are), check its manifest and yield an :class:`OpenedAppliance`.

    ``max_bytes`` bounds the bytes unpacked from an OVA. The kind is told by the file's content
    (a tar or not), not its name.
    """
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise InvalidAppliance(f"{source} does not exist or is not a regular file")
    if tarfile.is_tarfile(source):
        base = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        unpack = Path(tempfile.mkdtemp(prefix=".vmctl-ova.creating-", dir=base))
        try:
            appliance, disks, descriptor = _open_ova(source, unpack, max_bytes)
            yield OpenedAppliance(appliance, disks, source, unpack, packaged=True, descriptor=descriptor)
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
    else:
        appliance, disks = _open_ovf(source)
        yield OpenedAppliance(appliance, disks, source, None, packaged=False, descriptor=source)
