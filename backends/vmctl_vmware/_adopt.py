"""VMware VMs vmctl did not create, adopted by their ``.vmx`` (:meth:`VmwareHypervisor.adopt`).

Adoption writes a record in ``vm_dir/NAME/machine.json`` naming the ``.vmx`` where it is (never
moved or copied); from then on any process using that ``vm_dir`` opens it with
``hv.machine(NAME)``. Its spec is read from the ``.vmx``: ``memsize``, ``numvcpus``, the first
present disk (``overlay=False``), a present ``ethernet0`` (as ``Network()``), a file-backed
``serial0`` and the shared folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.backend.records import spec_from_record
from vmctl.backend.store import atomic_write
from vmctl.errors import InvalidSpec
from vmctl.types import MAX_CPUS, MAX_MEMORY_MIB, MachineSpec, validate_name

from ._vmx import VmxFile

if TYPE_CHECKING:
    from ._hypervisor import VmwareHypervisor
    from ._machine import VmwareMachine

__all__ = ["adopt", "spec_from_vmx"]

log = logging.getLogger("vmctl.vmware")

_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}")
_DISK_KEY = re.compile(r"(scsi|sata|nvme|ide)(\d+):(\d+)\.fileName", re.I)


def _number(value: str | None, top: int) -> int:
    return max(1, min(top, int(value))) if value and value.strip().isdigit() else 1


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() == "TRUE"


def spec_from_vmx(name: str, vmx: VmxFile, directory: Path) -> MachineSpec:
    """The spec of an adopted VM, from its ``.vmx`` (relative paths are relative to ``directory``)."""
    data: dict[str, Any] = {
        "name": name,
        "memory_mib": _number(vmx.get("memsize"), MAX_MEMORY_MIB),
        "cpus": _number(vmx.get("numvcpus"), MAX_CPUS),
    }
    disks = []
    for key in vmx.keys():
        value = vmx.get(key)
        match = _DISK_KEY.fullmatch(key)
        if not match or not value or not value.lower().endswith(".vmdk"):
            continue
        prefix = key[: -len(".fileName")]
        if vmx.get(prefix + ".present") is not None and not _true(vmx.get(prefix + ".present")):
            continue
        if (vmx.get(prefix + ".deviceType") or "disk").lower() not in ("disk", "scsi-harddisk"):
            continue
        disks.append((match.group(1).lower(), int(match.group(2)), int(match.group(3)), value))
    if disks:
        data["disk"], data["overlay"] = str(directory / sorted(disks)[0][3]), False
    if _true(vmx.get("ethernet0.present")):
        data["network"] = {"port_forwards": []}
    if _true(vmx.get("serial0.present")) and (vmx.get("serial0.fileType") or "").lower() == "file":
        path = vmx.get("serial0.fileName")
        if path:
            data["serial_log"] = str(directory / path)
    shared: dict[str, str] = {}
    readonly: list[str] = []
    for i in range(_number(vmx.get("sharedFolder.maxNum"), 64) if vmx.get("sharedFolder.maxNum") else 0):
        prefix = f"sharedFolder{i}."
        tag, path = vmx.get(prefix + "guestName"), vmx.get(prefix + "hostPath")
        if not tag or not path or not _true(vmx.get(prefix + "present")):
            continue
        if not _TAG_RE.fullmatch(tag):
            log.info("%s: shared folder %r is not a tag vmctl can name; left out of the spec", name, tag)
            continue
        shared[tag] = path
        if not _true(vmx.get(prefix + "writeAccess")):
            readonly.append(tag)
    if shared:
        data["shared_dirs"] = shared
    if readonly:
        data["readonly_shares"] = readonly
    return spec_from_record(data, adopted=True)


def adopt(hv: VmwareHypervisor, name: str, vmx: str | os.PathLike[str]) -> VmwareMachine:
    from ._machine import VmwareMachine

    validate_name(name)
    path = Path(vmx).expanduser().absolute()
    if path.suffix.lower() != ".vmx" or not path.is_file():
        raise InvalidSpec("vmx", f"{path} is not a .vmx file")
    config = VmxFile.load(path)
    spec = spec_from_vmx(name, config, path.parent)
    record = {
        "adopted": {"vmx": str(path)},
        "spec": spec.to_dict(),
        "product": hv.product,
        "base": None,
        "created": time.time(),
        "paused": False,
        "snapshots": {},
        "current": None,
    }
    with hv.store.creating(name) as tmp:
        atomic_write(tmp / "machine.json", json.dumps(record, indent=1, sort_keys=True).encode())
    log.info("%s: adopted %s", name, path)
    return VmwareMachine(hv, name)
