"""VMware ``.vmx`` and ``.vmsd`` files, read and written the way VMware's dictionary code does.

The grammar is open-vm-tools ``lib/dict/dictll.c`` (``DictLL_UnmarshalLine``), one line each::

    <ws> <name> <ws> = <ws> <value> <ws> <comment>
    <ws> <name> <ws> = <ws> " <quoted-value> " <ws> <comment>
    <ws> <name> <ws> = <ws> <comment>                  (the value is "")
    <ws> <comment>

``<ws>`` is spaces and tabs, a name has no whitespace, ``=`` or ``#``, an unquoted value ends at
whitespace or ``#``, a quoted one at the next ``"``; ``<comment>`` starts with ``#``. Any other
line is kept as it is. Values are unescaped byte by byte (``lib/misc/escape.c``: ``|`` and two hex
digits is that byte; anything else stays literal), and written quoted with ``"``, ``|``, DEL and
the control characters other than tab escaped (``DictLL_MarshalLine``). Keys are case-insensitive;
when a key appears twice the last one counts, as VMware reads it.

The file's bytes are in the character set its ``.encoding`` line names (a UTF-8 byte-order mark
means UTF-8; no ``.encoding`` line: UTF-8). Reading and writing keep that encoding and every byte
of every line vmctl does not change; a byte that does not decode is carried through unchanged
rather than replaced by U+FFFD. A value the file's encoding cannot hold makes the whole file
UTF-8 (``.encoding = "UTF-8"``), as VMware writes new files. An encoding Python does not know
raises :class:`VmxEncodingError` before anything is written.

>>> from vmctl_vmware._vmx import VmxFile
>>> vmx = VmxFile.parse('.encoding = "UTF-8"\\nmemsize = 256   # MB\\n')
>>> vmx.get("MemSize")
'256'
>>> vmx.set("memSize", "512")
>>> vmx.set("displayName", 'say "hi"')
>>> print(vmx.render(), end="")
.encoding = "UTF-8"
memsize = "512"   # MB
displayName = "say |22hi|22"
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmctl.backend.store import atomic_write
from vmctl.errors import BackendError, ErrorCode
from vmctl.types import MachineSpec

__all__ = [
    "VmxEncodingError",
    "VmxFile",
    "apply_spec",
    "new_vmx",
    "parse_line",
    "python_codec",
    "vmx_escape",
    "vmx_unescape",
]

#: vmx keys that say the VM holds a password vmrun could only get on its command line.
ENCRYPTION_KEYS = ("encryption.keysafe", "encryption.data")
GUEST_OS = "otherlinux-64"
HW_VERSION = "14"
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_ENCODING = "UTF-8"

_WS = b" \t"
_NAME_STOP = b"\0 \t#="
_VALUE_STOP = b"\0 \t#"
_HEX = b"0123456789abcdefABCDEF"


class VmxEncodingError(BackendError):
    """A ``.vmx`` names a character set vmctl cannot read or write; the file was not changed."""

    def __init__(self, path: str, encoding: str, problem: str) -> None:
        self.path = path
        self.encoding = encoding
        super().__init__(
            f"{path}: .encoding = {encoding!r}: {problem}",
            code=ErrorCode.UNSUPPORTED,
            native="vmx_encoding",
        )


def _escape_bytes(raw: bytes) -> bytes:
    out = bytearray()
    for byte in raw:
        if (byte < 0x20 and byte != 0x09) or byte in (0x22, 0x7C, 0x7F):
            out += b"|%02X" % byte
        else:
            out.append(byte)
    return bytes(out)


def _unescape_bytes(raw: bytes) -> bytes:
    # escape.c's state machine: "|" and two hex digits is a byte; the byte after "|" or after
    # "|<hex>" that ends an escape is taken literally, even when it is another "|".
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        if raw[i] != 0x7C:
            out.append(raw[i])
            i += 1
        elif i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        elif i + 1 < n and raw[i + 1] in _HEX:
            out += raw[i : i + 3]
            i += 3
        else:
            out += raw[i : i + 2]
            i += 2
    return bytes(out)


def vmx_escape(value: str, encoding: str = DEFAULT_ENCODING) -> str:
    """``value`` as VMware writes it between the quotes (``|22`` for ``"``)."""
    return _escape_bytes(value.encode(encoding, "surrogateescape")).decode(encoding, "surrogateescape")


def vmx_unescape(value: str, encoding: str = DEFAULT_ENCODING) -> str:
    """The value VMware reads from ``value`` as written between the quotes."""
    return _unescape_bytes(value.encode(encoding, "surrogateescape")).decode(encoding, "surrogateescape")


@dataclass(frozen=True)
class Setting:
    """A well-formed line: ``name``, the raw (still escaped) ``value``, and what follows it."""

    name: bytes
    value: bytes
    tail: bytes


def _skip(line: bytes, i: int, stop: bytes, *, while_in: bool) -> int:
    while i < len(line) and ((line[i] in stop) == while_in):
        i += 1
    return i


def parse_line(line: bytes) -> Setting | None:
    """One line (without its line ending) as ``DictLL_UnmarshalLine`` reads it; None if not a setting."""
    n0 = _skip(line, 0, _WS, while_in=True)
    n1 = _skip(line, n0, _NAME_STOP, while_in=False)
    i = _skip(line, n1, _WS, while_in=True)
    if n0 == n1 or i >= len(line) or line[i] != 0x3D:
        return None
    i = _skip(line, i + 1, _WS, while_in=True)
    if i < len(line) and line[i] == 0x22:
        v0 = i + 1
        v1 = _skip(line, v0, b'\0"', while_in=False)
        if v1 >= len(line) or line[v1] != 0x22:
            return None
        rest = v1 + 1
    else:
        v0 = i
        v1 = rest = _skip(line, v0, _VALUE_STOP, while_in=False)
    j = _skip(line, rest, _WS, while_in=True)
    if j < len(line) and line[j] not in b"\0#":
        return None
    return Setting(line[n0:n1], line[v0:v1], line[rest:])


#: Names VMware writes in ``.encoding`` (open-vm-tools lib/unicode/unicodeSimpleTypes.c) whose
#: Python codec differs in name or is the Windows variant VMware means.
_VMWARE_CHARSETS = {
    "shift_jis": "cp932",
    "windows-31j": "cp932",
    "big5": "cp950",
    "gbk": "cp936",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601-1989": "cp949",
    "ms949": "cp949",
    "ms874": "cp874",
    "ibm-1252": "cp1252",
}
_WINDOWS_CODEPAGE = re.compile(r"(?:windows|ibm)-(\d+)(?:-2000)?", re.I)


def python_codec(name: str, where: str = "<vmx>") -> str:
    """The Python codec for a ``.encoding`` value, or :class:`VmxEncodingError`.

    >>> python_codec("windows-949-2000"), python_codec("Shift_JIS"), python_codec("UTF-8")
    ('cp949', 'cp932', 'UTF-8')
    """
    lowered = name.strip().lower()
    candidates = [_VMWARE_CHARSETS.get(lowered, name.strip())]
    m = _WINDOWS_CODEPAGE.fullmatch(lowered)
    if m:
        candidates.append(f"cp{m.group(1)}")
    for codec in candidates:
        try:
            # An ASCII-compatible text codec: bytes-to-bytes codecs and UTF-16/32 do not qualify.
            if ' = "#|\n'.encode(codec) == b' = "#|\n' and codecs.lookup(codec):
                return codec
        except (LookupError, ValueError):
            continue
    raise VmxEncodingError(where, name, "not a character set vmctl can read and write")


@dataclass
class _Line:
    raw: bytes
    eol: bytes
    setting: Setting | None


class VmxFile:
    """An ordered ``.vmx`` (or ``.vmsd``) file; lines vmctl does not change stay byte for byte."""

    def __init__(self, lines: list[_Line], encoding: str = DEFAULT_ENCODING, bom: bool = False) -> None:
        self._lines = lines
        self.encoding = encoding
        self.bom = bom

    # -- reading --------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, where: str = "<vmx>") -> VmxFile:
        bom = data.startswith(UTF8_BOM)
        body = data[len(UTF8_BOM) :] if bom else data
        lines: list[_Line] = []
        pieces = body.split(b"\n")
        for n, piece in enumerate(pieces):
            if n == len(pieces) - 1 and piece == b"":
                break
            eol = b"\n" if n < len(pieces) - 1 else b""
            if piece.endswith(b"\r"):
                piece, eol = piece[:-1], b"\r" + eol
            lines.append(_Line(piece, eol, parse_line(piece)))
        declared = None
        for line in lines:
            if line.setting is not None and line.setting.name.lower() == b".encoding":
                declared = _unescape_bytes(line.setting.value).decode("ascii", "replace")
        return cls(lines, python_codec(declared or DEFAULT_ENCODING, where), bom)

    @classmethod
    def parse(cls, text: str) -> VmxFile:
        """A file given as text: encoded in the character set its own ``.encoding`` line names."""
        probe = cls.from_bytes(text.encode("utf-8", "surrogateescape"))
        return cls.from_bytes(text.encode(probe.encoding, "surrogateescape"))

    @classmethod
    def load(cls, path: Path) -> VmxFile:
        return cls.from_bytes(Path(path).read_bytes(), os.fspath(path))

    # -- writing --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return (UTF8_BOM if self.bom else b"") + b"".join(line.raw + line.eol for line in self._lines)

    def render(self) -> str:
        return self.to_bytes().decode(self.encoding, "surrogateescape").removeprefix("\ufeff")

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_bytes())

    # -- settings -------------------------------------------------------------------------
    def _name(self, setting: Setting) -> str:
        return setting.name.decode(self.encoding, "surrogateescape")

    def _value(self, setting: Setting) -> str:
        return _unescape_bytes(setting.value).decode(self.encoding, "surrogateescape")

    def _matches(self, key: str) -> list[int]:
        wanted = key.lower()
        return [i for i, ln in enumerate(self._lines) if ln.setting and self._name(ln.setting).lower() == wanted]

    def keys(self) -> list[str]:
        return [self._name(ln.setting) for ln in self._lines if ln.setting is not None]

    def items(self) -> list[tuple[str, str]]:
        return [(self._name(ln.setting), self._value(ln.setting)) for ln in self._lines if ln.setting is not None]

    def get(self, key: str, default: str | None = None) -> str | None:
        found = self._matches(key)
        if not found:
            return default
        setting = self._lines[found[-1]].setting
        assert setting is not None
        return self._value(setting)

    def _marshal(self, name: str, value: str, tail: bytes) -> tuple[bytes, Setting]:
        raw_name = name.encode(self.encoding, "surrogateescape")
        raw_value = _escape_bytes(value.encode(self.encoding, "surrogateescape"))
        line = raw_name + b' = "' + raw_value + b'"' + tail
        return line, Setting(raw_name, raw_value, tail)

    def set(self, key: str, value: str) -> None:
        """Set ``key``: its line is rewritten where it is (a trailing comment kept), later
        duplicates go; a new key goes at the end."""
        try:
            value.encode(self.encoding, "surrogateescape")
        except UnicodeEncodeError:
            self._become_utf8()
        found = self._matches(key)
        if not found:
            eol = self._lines[0].eol if self._lines and self._lines[0].eol else b"\n"
            if self._lines and not self._lines[-1].eol:
                self._lines[-1].eol = eol
            raw, setting = self._marshal(key, value, b"")
            self._lines.append(_Line(raw, eol, setting))
            return
        first = self._lines[found[0]]
        assert first.setting is not None
        first.raw, first.setting = self._marshal(self._name(first.setting), value, first.setting.tail)
        for i in reversed(found[1:]):
            del self._lines[i]

    def _become_utf8(self) -> None:
        old = self.encoding
        converted: list[_Line] = []
        for line in self._lines:
            text = line.raw.decode(old, "surrogateescape")
            if any("\udc80" <= c <= "\udcff" for c in text):
                raise VmxEncodingError("<vmx>", old, "a byte of the file is not in its character set")
            raw = text.encode("utf-8")
            converted.append(_Line(raw, line.eol, parse_line(raw)))
        self._lines, self.encoding = converted, "UTF-8"
        for line in self._lines:
            if line.setting is not None and b"|" in line.setting.value:
                value = _unescape_bytes(line.setting.value).decode(old, "surrogateescape")
                line.raw, line.setting = self._marshal(self._name(line.setting), value, line.setting.tail)
        if self._matches(".encoding"):
            self.set(".encoding", "UTF-8")
        else:
            raw, setting = self._marshal(".encoding", "UTF-8", b"")
            self._lines.insert(0, _Line(raw, self._lines[0].eol if self._lines else b"\n", setting))

    def remove(self, key: str) -> None:
        for i in reversed(self._matches(key)):
            del self._lines[i]

    def remove_prefix(self, *prefixes: str) -> None:
        lowered = tuple(p.lower() for p in prefixes)
        self._lines = [
            ln for ln in self._lines if ln.setting is None or not self._name(ln.setting).lower().startswith(lowered)
        ]

    def is_encrypted(self) -> bool:
        return any(self.get(key) for key in ENCRYPTION_KEYS)


def new_vmx(display_name: str, disk: Path, memory_mib: int = 256, cpus: int = 1) -> VmxFile:
    """A minimal VM around ``disk`` (kept where it is, named by absolute path)."""
    vmx = VmxFile.parse('.encoding = "UTF-8"\n')
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
