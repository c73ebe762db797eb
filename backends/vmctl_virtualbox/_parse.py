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
from dataclasses import dataclass

__all__ = [
    "SnapshotNode",
    "parse_extradata_enumerate",
    "parse_extradata_value",
    "parse_log_pid",
    "parse_machinereadable",
    "parse_metrics",
    "parse_snapshot_list",
    "parse_snapshot_taken",
    "parse_vm_list",
]

_VM_LINE = re.compile(r'^"(?P<name>.*)" \{(?P<uuid>[0-9a-fA-F-]{36})\}\s*$')


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


def _closing_quote(text: str, start: int) -> int:
    """Index of the unescaped ``"`` that ends a value starting at ``start``, or -1."""
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            end = text.find("\n", i)
            rest = text[i + 1 : end if end != -1 else len(text)]
            if rest.strip() == "":
                return i
        i += 1
    return -1


def _quoted_key_end(line: str) -> int:
    """Index of the ``"`` closing a quoted key (followed by ``=``), or -1."""
    i = 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return i if line[i + 1 : i + 2] == "=" else -1
        i += 1
    return -1


def parse_machinereadable(text: str) -> dict[str, str]:
    """Parse ``showvminfo --machinereadable`` (or ``snapshot list --machinereadable``) output.

    Keys may be quoted (``"SATA-0-0"``); string values are quoted with ``\\"`` and ``\\\\``
    escaped and may span lines; numbers are bare. Lines that are not ``key=value`` are skipped.
    """
    result: dict[str, str] = {}
    pos = 0
    n = len(text)
    while pos < n:
        eol = text.find("\n", pos)
        if eol == -1:
            eol = n
        line = text[pos:eol]
        if line.startswith('"'):
            key_end = _quoted_key_end(line)
            if key_end < 0:
                pos = eol + 1
                continue
            key = _unescape(line[1:key_end])
            value_start = pos + key_end + 2
        else:
            eq = line.find("=")
            if eq <= 0:
                pos = eol + 1
                continue
            key = line[:eq]
            value_start = pos + eq + 1
        if value_start < n and text[value_start] == '"':
            close = _closing_quote(text, value_start + 1)
            if close == -1:
                result[key] = _unescape(text[value_start + 1 : eol])
                pos = eol + 1
            else:
                result[key] = _unescape(text[value_start + 1 : close])
                nl = text.find("\n", close)
                pos = n if nl == -1 else nl + 1
        else:
            # Numbers are bare; VBoxManage prints one key with a doubled "=" (VRDEClients==0).
            result[key] = text[value_start:eol].strip().lstrip("=")
            pos = eol + 1
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
    """The snapshot tree (``SnapshotName``, ``SnapshotName-1``, ``SnapshotName-1-2``, ...)."""
    if "does not have any snapshots" in text:
        return []
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
