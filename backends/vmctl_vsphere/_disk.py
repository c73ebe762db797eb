"""Local disk images made ready for a datastore: format check, capacity, the files to upload.

ESXi opens a disk as a text descriptor plus one flat extent (``createType="vmfs"``). A raw image
becomes the extent of a descriptor written here; a single-extent flat VMDK (``monolithicFlat`` or
``vmfs``) is uploaded with its descriptor rewritten for ESXi. Sparse formats (qcow2, sparse or
streamOptimized VMDK, VDI, VHDX) are refused with the ``qemu-img convert`` command that fixes them:
ESXi cannot run them without a conversion that vmctl does not do behind the user's back.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from vmctl.errors import InvalidSpec

__all__ = ["DESCRIPTOR_NAME", "EXTENT_NAME", "DiskImage", "inspect_disk"]

DESCRIPTOR_NAME = "disk.vmdk"
EXTENT_NAME = "disk-flat.vmdk"
SECTOR = 512
_CONVERT = "convert it with: qemu-img convert -O raw {path} image.raw"
_SPARSE_MAGICS = {
    b"QFI\xfb": "qcow2",
    b"KDMV": "sparse or streamOptimized VMDK",
    b"COWD": "ESX sparse VMDK",
    b"vhdxfile": "VHDX",
}
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"(?:\s+(\d+))?\s*$')

_digest_cache: dict[tuple[str, int, int, int], str] = {}
_digest_lock = threading.Lock()


@dataclass(frozen=True)
class DiskImage:
    """A local image as the datastore will hold it: a descriptor text and one flat extent."""

    source: Path
    extent: Path
    capacity_bytes: int
    descriptor: bytes
    digest: str

    @property
    def capacity_kb(self) -> int:
        return (self.capacity_bytes + 1023) // 1024


def _refuse(path: Path, what: str) -> InvalidSpec:
    return InvalidSpec(
        "disk",
        f"{path} is a {what} image; vSphere needs a raw image or a flat VMDK. " + _CONVERT.format(path=path),
    )


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _digest_lock:
        if key in _digest_cache:
            return _digest_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        _digest_cache[key] = digest
    return digest


def descriptor_for(sectors: int, digest: str, adapter: str = "lsilogic") -> bytes:
    """An ESXi descriptor for one flat extent of ``sectors`` 512-byte sectors (content ``digest``)."""
    cylinders = max(1, min(65535, sectors // (255 * 63)))
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        f"CID={digest[:8]}",
        "parentCID=ffffffff",
        'createType="vmfs"',
        "",
        "# Extent description",
        f'RW {sectors} VMFS "{EXTENT_NAME}"',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        f'ddb.adapterType = "{adapter}"',
        f'ddb.geometry.cylinders = "{cylinders}"',
        'ddb.geometry.heads = "255"',
        'ddb.geometry.sectors = "63"',
        'ddb.virtualHWVersion = "10"',
        "",
    ]
    return "\n".join(lines).encode()


def _parse_descriptor(path: Path, text: str) -> tuple[Path, int, str]:
    """The extent file, its sectors and the adapter type of a flat VMDK descriptor."""
    extents = []
    adapter = "lsilogic"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("parentFileNameHint"):
            raise InvalidSpec("disk", f"{path} is a delta disk (it has a parent); give the base image")
        if line.startswith("ddb.adapterType"):
            value = line.split("=", 1)[1].strip().strip('"')
            if value in ("ide", "buslogic", "lsilogic", "legacyESX", "pvscsi", "lsisas1068"):
                adapter = value
        m = _EXTENT.match(line)
        if m:
            extents.append((int(m.group(2)), m.group(3).upper(), m.group(4), m.group(5)))
    if len(extents) != 1:
        raise InvalidSpec(
            "disk", f"{path} has {len(extents)} extents; vSphere needs one flat extent. " + _CONVERT.format(path=path)
        )
    sectors, kind, name, offset = extents[0]
    if kind not in ("FLAT", "VMFS") or (offset not in (None, "0")):
        raise _refuse(path, f"VMDK with a {kind} extent")
    extent = (path.parent / name).resolve()
    if not extent.is_file():
        raise InvalidSpec("disk", f"the extent {extent} named by {path} does not exist")
    if extent.stat().st_size < sectors * SECTOR:
        raise InvalidSpec("disk", f"the extent {extent} is shorter than the {sectors} sectors {path} declares")
    return extent, sectors, adapter


def inspect_disk(path: Path) -> DiskImage:
    """Check that ``path`` can become a vSphere disk; raise :class:`InvalidSpec` saying how if not."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for magic, what in _SPARSE_MAGICS.items():
        if head.startswith(magic):
            raise _refuse(path, what)
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        raise _refuse(path, "VDI")
    if head.startswith(b"# Disk DescriptorFile") or b"createType=" in head[:1024]:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise InvalidSpec("disk", f"{path} looks like a VMDK descriptor but cannot be read: {exc}") from None
        extent, sectors, adapter = _parse_descriptor(path, text)
        return _image(path, extent, sectors, adapter)
    size = os.path.getsize(path)
    if size == 0 or size % SECTOR:
        raise InvalidSpec("disk", f"{path} is not a raw image: its size {size} is not a positive multiple of 512")
    return _image(path, path, size // SECTOR, "lsilogic")


def _image(source: Path, extent: Path, sectors: int, adapter: str) -> DiskImage:
    digest = hashlib.sha256(f"{_file_digest(extent)}:{sectors}".encode()).hexdigest()
    return DiskImage(source, extent, sectors * SECTOR, descriptor_for(sectors, digest, adapter), digest)
