"""VirtualBox VMs vmctl did not create (no ``vmctl/spec`` extradata): their spec read from
``showvminfo``. The first attached disk is the disk (``overlay=False``: VirtualBox does not say
here whether it is a differencing image), a NIC is ``Network()`` (its NAT rules are not vmctl's),
shared folders are shares and a file-backed first serial port is the serial log."""

from __future__ import annotations

import logging
import re
from typing import Any

from vmctl.backend.records import spec_from_record
from vmctl.types import MAX_CPUS, MAX_MEMORY_MIB, MachineSpec

from ._transport import VMInfo

__all__ = ["spec_from_info"]

log = logging.getLogger("vmctl.virtualbox")

_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}")


def spec_from_info(info: VMInfo) -> MachineSpec:
    data: dict[str, Any] = {
        "name": info.name,
        "memory_mib": max(1, min(MAX_MEMORY_MIB, info.memory_mib or 1)),
        "cpus": max(1, min(MAX_CPUS, info.cpus or 1)),
    }
    disks = [path for _, path in sorted(info.disks.items()) if path]
    if disks:
        data["disk"], data["overlay"] = disks[0], False
    if info.cable_connected is not None:
        data["network"] = {"port_forwards": []}
    raw = info.raw
    shared: dict[str, str] = {}
    for key, tag in raw.items():
        if not key.startswith("SharedFolderNameMachineMapping"):
            continue
        path = raw.get("SharedFolderPathMachineMapping" + key.removeprefix("SharedFolderNameMachineMapping"))
        if not path:
            continue
        if _TAG_RE.fullmatch(tag):
            shared[tag] = path
        else:
            log.info("%s: shared folder %r is not a tag vmctl can name; left out of the spec", info.name, tag)
    if shared:
        data["shared_dirs"] = shared
    mode = raw.get("uartmode1", "")
    if mode.startswith("file,"):
        data["serial_log"] = mode.removeprefix("file,")
    return spec_from_record(data, adopted=True)
