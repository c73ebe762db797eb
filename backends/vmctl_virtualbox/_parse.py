"""Parsing VBoxManage 7 output: machine-readable ``key="value"`` lines, VM lists, snapshot trees,
``getextradata``, ``metrics query`` tables and VM logs.

>>> info = parse_machinereadable('name="a \\\\"b\\\\""\\nmemory=256\\n"SATA-0-0"="/x.vdi"\\nVRDEClients==0\\n')
>>> info["name"], info["memory"], info["SATA-0-0"], info["VRDEClients"]
('a "b"', '256', '/x.vdi', '0')
>>> parse_vm_list('"web 1" {0f5c7a46-0000-4000-8000-000000000001}\\n')
{'web 1': '0f5c7a46-0000-4000-8000-000000000001'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SnapshotNode",
    "extpack_has_vrde",
    "parse_extradata_enumerate",
    "parse_extradata_value",
    "parse_log_pid",
    "parse_machinereadable",
    "parse_metrics",
    "parse_snapshot_list",
    "parse_snapshot_taken",
    "parse_version",
    "parse_vm_list",
    "version_newer",
    "vrde_port",
]

_VM_LINE = re.compile(r'^"(?P<name>.*)" \{(?P<uuid>[0-9a-fA-F-]{36})\}\s*$')

#: Keys VBoxManageInfo.cpp's ``showSnapshots`` prints with a plain ``RTPrintf("%s=\"%ls\"")``: their
#: values are not escaped (a ``"`` or ``\`` in a snapshot's name or description is printed as is,
#: a newline in a description starts a new line), so each is read from its own line, as printed.
_RAW_KEY = re.compile(r"^(?:SnapshotName|SnapshotDescription|CurrentSnapshotName)(?:-\d+)*$")
#: Escaped values that may hold a newline (a machine's free-text description); every other value
#: ends on its line.
_MULTILINE_KEYS = frozenset({"description"})


def _unescape(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in '"\\':
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _escaped_end(text: str, start: int) -> int:
    """Index of the first unescaped ``"`` at or after ``start``, or -1."""
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    return -1


def _quoted_key_end(line: str) -> int:
    """Index of the ``"`` closing a quoted key (followed by ``=``), or -1."""
    end = _escaped_end(line, 1)
    return end if end > 0 and line[end + 1 : end + 2] == "=" else -1


def _raw_value(rest: str) -> str:
    """An unescaped value as printed: the outer quotes stripped, nothing else."""
    if len(rest) >= 2 and rest.startswith('"') and rest.endswith('"'):
        return rest[1:-1]
    return rest[1:] if rest.startswith('"') else rest


def parse_machinereadable(text: str) -> dict[str, str]:
    """Parse ``showvminfo --machinereadable`` (or ``snapshot list --machinereadable``) output.

    One ``key=value`` per line, the key anchored at the line start. Keys may be quoted
    (``"SATA-0-0"``); string values are quoted with ``\\"`` and ``\\\\`` escaped, except the
    snapshot keys, printed unescaped (:data:`_RAW_KEY`), which are taken as printed with only the
    outer quotes stripped. Numbers are bare. Text after a value's closing quote is dropped
    (running machines print ``VideoMode="720,400,0"@0,0 1``). Only ``description`` may continue
    on the next lines (VirtualBox escapes no newline). Lines that are not ``key=value`` are
    skipped; the first of two equal keys wins.
    """
    result: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        i += 1
        if line.startswith('"'):
            key_end = _quoted_key_end(line)
            if key_end < 0:
                continue
            key = _unescape(line[1:key_end])
            rest = line[key_end + 2 :]
        else:
            eq = line.find("=")
            if eq <= 0:
                continue
            key = line[:eq]
            rest = line[eq + 1 :]
        if key in result:
            continue
        if _RAW_KEY.match(key):
            result[key] = _raw_value(rest)
            continue
        if not rest.startswith('"'):
            # Numbers are bare; VBoxManage prints one key with a doubled "=" (VRDEClients==0).
            result[key] = rest.strip().lstrip("=")
            continue
        close = _escaped_end(rest, 1)
        if close != -1:
            result[key] = _unescape(rest[1:close])
            continue
        if key in _MULTILINE_KEYS:
            body = rest[1:]
            j = i
            while j < len(lines):
                nxt = lines[j].rstrip("\r")
                end = _escaped_end(nxt, 0)
                if end != -1 and nxt[end + 1 :].strip() == "":
                    result[key] = _unescape(body + "\n" + "\n".join([*lines[i:j], nxt[:end]]))
                    i = j + 1
                    break
                j += 1
            else:
                result[key] = _unescape(body)
            if key in result:
                continue
        result[key] = _unescape(rest[1:])
    return result


def parse_vm_list(text: str) -> dict[str, str]:
    """``list vms`` / ``list runningvms``: ``"name" {uuid}`` lines -> {name: uuid}."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        m = _VM_LINE.match(line)
        if m:
            result[m.group("name")] = m.group("uuid").lower()
    return result


@dataclass(frozen=True)
class SnapshotNode:
    """One snapshot from ``snapshot list --machinereadable``; ``order`` is its depth-first position."""

    name: str
    uuid: str
    description: str
    parent_uuid: str | None
    order: int
    current: bool


def parse_snapshot_list(text: str) -> list[SnapshotNode]:
    """The snapshot tree (``SnapshotName``, ``SnapshotName-1``, ``SnapshotName-1-2``, ...).

    Names and descriptions are opaque text; a snapshot is known by its UUID. A machine without
    snapshots prints ``This machine does not have any snapshots`` (no ``SnapshotName`` line).
    """
    values = parse_machinereadable(text)
    current = values.get("CurrentSnapshotUUID", "").lower()
    by_suffix: dict[str, str] = {}
    nodes: list[SnapshotNode] = []
    for key, name in values.items():
        if not key.startswith("SnapshotName"):
            continue
        suffix = key[len("SnapshotName") :]
        if suffix and not re.fullmatch(r"(-\d+)+", suffix):
            continue
        uuid = values.get("SnapshotUUID" + suffix, "").lower()
        if not _UUID.fullmatch(uuid):
            # Not a snapshot: a line of a multi-line description that looks like one.
            continue
        by_suffix[suffix] = uuid
        parent_suffix = suffix.rsplit("-", 1)[0] if suffix else None
        parent = by_suffix.get(parent_suffix) if parent_suffix is not None else None
        nodes.append(
            SnapshotNode(
                name=name,
                uuid=uuid,
                description=values.get("SnapshotDescription" + suffix, ""),
                parent_uuid=parent,
                order=len(nodes),
                current=uuid == current,
            )
        )
    return nodes


_VERSION = re.compile(r"^\d+\.\d+\.\d+\S*$")


def parse_version(text: str) -> tuple[str | None, str]:
    """``--version``: (the version line or None, the text printed before it).

    A host without the vboxdrv kernel module prints a ``WARNING: The vboxdrv kernel module is not
    loaded. ...`` paragraph before the version (exit status 0).

    >>> parse_version("7.0.20r163906\\n")
    ('7.0.20r163906', '')
    >>> parse_version("WARNING: The vboxdrv kernel module is not loaded.\\n\\n6.0.8r130520\\n")
    ('6.0.8r130520', 'WARNING: The vboxdrv kernel module is not loaded.')
    """
    lines = [line.rstrip("\r") for line in text.split("\n")]
    for i in range(len(lines) - 1, -1, -1):
        if _VERSION.match(lines[i].strip()):
            return lines[i].strip(), "\n".join(lines[:i]).strip()
    return None, text.strip()


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAKEN = re.compile(r"Snapshot taken\. UUID: ([0-9a-fA-F-]{36})")


def parse_snapshot_taken(text: str) -> str | None:
    m = _TAKEN.search(text)
    return m.group(1).lower() if m else None


def parse_extradata_value(text: str) -> str | None:
    """``getextradata <vm> <key>``: ``Value: ...`` or ``No value set!``."""
    for line in text.splitlines():
        if line.startswith("Value: "):
            return line[len("Value: ") :]
    return None


def parse_extradata_enumerate(text: str) -> dict[str, str]:
    """``getextradata <vm> enumerate``: ``Key: k, Value: v`` lines."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Key: ") and ", Value: " in line:
            key, value = line[len("Key: ") :].split(", Value: ", 1)
            result[key] = value
    return result


_METRIC_LINE = re.compile(r"^(?P<obj>\S.*?)\s+(?P<metric>[A-Za-z]+/\S+)\s+(?P<values>.*)$")
_VALUE = re.compile(r"^(?P<num>-?\d+(?:\.\d+)?)\s*(?P<unit>%|kB|B/s|MB|ms|)$")


def parse_metrics(text: str) -> dict[str, dict[str, tuple[float, str]]]:
    """``metrics query``: {object: {metric: (last value, unit)}}; aggregates (``:avg``) included."""
    result: dict[str, dict[str, tuple[float, str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("Object ", "-----")):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        values = [v.strip() for v in m.group("values").split(",") if v.strip()]
        if not values:
            continue
        v = _VALUE.match(values[-1])
        if not v:
            continue
        result.setdefault(m.group("obj").strip(), {})[m.group("metric")] = (float(v.group("num")), v.group("unit"))
    return result


_PID = re.compile(r"Process ID: (\d+)")


def parse_log_pid(text: str) -> int | None:
    """The VM process id from the header of ``VBox.log`` (as BOINC's vboxwrapper reads it)."""
    m = _PID.search(text)
    return int(m.group(1)) if m else None


def extpack_has_vrde(text: str) -> bool:
    """``list extpacks``: whether a usable pack provides the VRDE server (VBoxVRDP), as
    vboxwrapper's ``is_extpack_installed`` checks.

    >>> extpack_has_vrde("Extension Packs: 0\\n")
    False
    >>> extpack_has_vrde("Extension Packs: 1\\nPack no. 0:   Oracle VM VirtualBox Extension Pack\\n"
    ...                  "VRDE Module:  VBoxVRDP\\nUsable:       true\\nWhy unusable: \\n")
    True
    """
    packs = re.split(r"^Pack no\.\s*\d+:", text, flags=re.M)[1:]
    for pack in packs:
        fields = dict(line.split(":", 1) for line in pack.splitlines() if ":" in line)
        if fields.get("VRDE Module", "").strip() and fields.get("Usable", "true").strip() == "true":
            return True
    return False


def vrde_port(raw: Mapping[str, str]) -> int | None:
    """The port a VM's VRDE server bound, from ``showvminfo --machinereadable``'s ``vrdeport=``
    (IVRDEServerInfo::port): None when VRDE is off or its server not started (-1); 0 when the
    server failed to bind any port of its range.

    >>> vrde_port({"vrde": "on", "vrdeport": "3390"}), vrde_port({"vrde": "on", "vrdeport": "-1"})
    (3390, None)
    >>> vrde_port({"vrde": "off"})
    """
    port = raw.get("vrdeport", "-1").strip()
    if raw.get("vrde") != "on" or not port.lstrip("-").isdigit() or int(port) < 0:
        return None
    return int(port)


def version_newer(version: str, than: tuple[int, ...]) -> bool:
    """Whether a ``--version`` string (``7.1.4r165100``) is newer than ``than``.

    >>> version_newer("7.1.4r165100", (7, 0, 99)), version_newer("7.0.20r163906", (7, 0, 99))
    (True, False)
    """
    numbers = tuple(int(n) for n in re.findall(r"\d+", version.split("r", 1)[0])[:3])
    return numbers > than
