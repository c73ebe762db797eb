"""VMware ``.vmx`` configuration files: ``key = "value"`` lines, keys case-insensitive.

Values are escaped the way VMware writes them (``|22`` for a double quote, ``|7C`` for ``|``,
``|0A`` for a newline), so no value can break out of its line.

>>> from vmctl_vmware._vmx import VmxFile
>>> vmx = VmxFile.parse('.encoding = "UTF-8"\\nmemsize = "256"\\n')
>>> vmx.get("MemSize")
'256'
>>> vmx.set("displayName", 'say "hi"')
>>> print(vmx.render(), end="")
.encoding = "UTF-8"
memsize = "256"
displayName = "say |22hi|22"
"""

from __future__ import annotations

import re
from pathlib import Path

from vmctl.backend.store import atomic_write
from vmctl.types import MachineSpec

__all__ = ["VmxFile", "apply_spec", "new_vmx", "vmx_escape", "vmx_unescape"]

_LINE = re.compile(r'^\s*([^\s=#"]+)\s*=\s*"(.*)"\s*$')
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")

#: vmx keys that say the VM holds a password vmrun could only get on its command line.
ENCRYPTION_KEYS = ("encryption.keysafe", "encryption.data")
GUEST_OS = "otherlinux-64"
HW_VERSION = "14"


def vmx_escape(value: str) -> str:
    return "".join(f"|{ord(c):02X}" if c in '|"#' or ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)


def vmx_unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


class VmxFile:
    """An ordered ``.vmx`` (or ``.vmsd``) file; lines that are not settings are kept as they are."""

    def __init__(self, lines: list[str | tuple[str, str]]) -> None:
        self._lines = lines

    @classmethod
    def parse(cls, text: str) -> VmxFile:
        lines: list[str | tuple[str, str]] = []
        for raw in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
            raw = raw.removesuffix("\r")
            m = _LINE.match(raw)
            lines.append((m.group(1), vmx_unescape(m.group(2))) if m else raw)
        return cls(lines)

    @classmethod
    def load(cls, path: Path) -> VmxFile:
        return cls.parse(path.read_text(encoding="utf-8", errors="replace"))

    def save(self, path: Path) -> None:
        atomic_write(path, self.render().encode("utf-8"))

    def render(self) -> str:
        out = [line if isinstance(line, str) else f'{line[0]} = "{vmx_escape(line[1])}"' for line in self._lines]
        return "\n".join(out) + "\n"

    def keys(self) -> list[str]:
        return [line[0] for line in self._lines if not isinstance(line, str)]

    def get(self, key: str, default: str | None = None) -> str | None:
        wanted = key.lower()
        for line in self._lines:
            if not isinstance(line, str) and line[0].lower() == wanted:
                return line[1]
        return default

    def set(self, key: str, value: str) -> None:
        wanted = key.lower()
        for i, line in enumerate(self._lines):
            if not isinstance(line, str) and line[0].lower() == wanted:
                self._lines[i] = (line[0], value)
                return
        self._lines.append((key, value))

    def remove(self, key: str) -> None:
        wanted = key.lower()
        self._lines = [line for line in self._lines if isinstance(line, str) or line[0].lower() != wanted]

    def remove_prefix(self, *prefixes: str) -> None:
        lowered = tuple(p.lower() for p in prefixes)
        self._lines = [line for line in self._lines if isinstance(line, str) or not line[0].lower().startswith(lowered)]

    def is_encrypted(self) -> bool:
        return any(self.get(key) for key in ENCRYPTION_KEYS)


def new_vmx(display_name: str, disk: Path, memory_mib: int = 256, cpus: int = 1) -> VmxFile:
    """A minimal VM around ``disk`` (kept where it is, named by absolute path)."""
    vmx = VmxFile(['.encoding = "UTF-8"'])
    for key, value in (
        ("config.version", "8"),
        ("virtualHW.version", HW_VERSION),
        ("displayName", display_name),
        ("guestOS", GUEST_OS),
        ("memsize", str(memory_mib)),
        ("numvcpus", str(cpus)),
        ("scsi0.present", "TRUE"),
        ("scsi0.virtualDev", "lsilogic"),
        ("scsi0:0.present", "TRUE"),
        ("scsi0:0.fileName", str(disk)),
        ("ethernet0.present", "FALSE"),
        ("msg.autoAnswer", "TRUE"),
    ):
        vmx.set(key, value)
    return vmx


def apply_spec(vmx: VmxFile, spec: MachineSpec) -> None:
    """Set what the spec says: memory, CPUs, serial port to a file, NAT NIC, shared folders."""
    vmx.set("displayName", spec.name)
    vmx.set("memsize", str(spec.memory_mib))
    vmx.set("numvcpus", str(spec.cpus))
    vmx.set("msg.autoAnswer", "TRUE")
    vmx.remove_prefix("serial0.")
    if spec.serial_log is not None:
        vmx.set("serial0.present", "TRUE")
        vmx.set("serial0.fileType", "file")
        vmx.set("serial0.fileName", str(spec.serial_log))
        vmx.set("serial0.yieldOnMsrRead", "TRUE")
    vmx.remove_prefix("ethernet0.")
    if spec.network is not None:
        vmx.set("ethernet0.present", "TRUE")
        vmx.set("ethernet0.connectionType", "nat")
        vmx.set("ethernet0.virtualDev", "e1000")
        vmx.set("ethernet0.addressType", "generated")
        vmx.set("ethernet0.startConnected", "TRUE")
    else:
        vmx.set("ethernet0.present", "FALSE")
    vmx.remove_prefix("sharedfolder")
    vmx.remove("isolation.tools.hgfs.disable")
    if spec.shared_dirs:
        vmx.set("isolation.tools.hgfs.disable", "FALSE")
        for i, (tag, directory) in enumerate(sorted(spec.shared_dirs.items())):
            prefix = f"sharedFolder{i}."
            for key, value in (
                ("present", "TRUE"),
                ("enabled", "TRUE"),
                ("readAccess", "TRUE"),
                ("writeAccess", "FALSE" if tag in spec.readonly_shares else "TRUE"),
                ("hostPath", str(directory)),
                ("guestName", tag),
                ("expiration", "never"),
            ):
                vmx.set(prefix + key, value)
        vmx.set("sharedFolder.maxNum", str(len(spec.shared_dirs)))
