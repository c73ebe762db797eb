"""How machines, usage and snapshots look: plain-text tables and HTML for Jupyter.

Everything here is pure formatting: it reads a machine's spec, state and pid and never changes
anything. Every value put into HTML is escaped.

The core returns plain values (a ``list`` of machines, a ``dict`` of usages); :func:`table` wraps
one in a list that shows as a table: in Jupyter as HTML, with ``print()`` as aligned text. Single
machines, usage samples and snapshots show as HTML in IPython and Jupyter once this module is
imported (``import vmctl`` does), or with ``%load_ext vmctl.display``.

>>> from vmctl.display import format_bytes, text_table
>>> format_bytes(256 * 1024 * 1024)
'256.0 MiB'
>>> print(text_table(["NAME", "STATE"], [["web-1", "running"], ["db", "stopped"]]))
NAME   STATE
web-1  running
db     stopped
"""

from __future__ import annotations

import datetime
import html
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

from vmctl.errors import MachineNotFound
from vmctl.interface import Machine
from vmctl.types import Snapshot, Usage

__all__ = [
    "MachineList",
    "SnapshotList",
    "UsageMap",
    "format_bytes",
    "format_rate",
    "format_seconds",
    "format_time",
    "html_table",
    "machine_fields",
    "machine_html",
    "machine_text",
    "machines_html",
    "machines_text",
    "snapshot_html",
    "snapshots_html",
    "snapshots_text",
    "table",
    "text_table",
    "usage_html",
    "usage_rates",
    "usage_text",
    "usages_html",
    "usages_text",
]

MISSING = "-"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_STATE_COLOURS = {
    "running": "#1a7f37",
    "paused": "#9a6700",
    "suspended": "#0969da",
    "stopped": "#57606a",
    "crashed": "#cf222e",
}


# -- value formatting ----------------------------------------------------------------------------
def format_bytes(n: float | None) -> str:
    """Bytes in binary units: ``'1.5 GiB'``; ``'-'`` for None.

    >>> format_bytes(0), format_bytes(1023), format_bytes(1536), format_bytes(None)
    ('0 B', '1023 B', '1.5 KiB', '-')
    """
    if n is None:
        return MISSING
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(n: float | None) -> str:
    """A byte rate: ``'2.0 MiB/s'``; ``'-'`` for None.

    >>> format_rate(2 * 1024 * 1024), format_rate(None)
    ('2.0 MiB/s', '-')
    """
    return MISSING if n is None else format_bytes(n) + "/s"


def format_seconds(s: float | None) -> str:
    """A duration: ``'12.35 s'``, ``'3 min 04 s'``, ``'2 h 05 min'``; ``'-'`` for None.

    >>> format_seconds(1.23456), format_seconds(184), format_seconds(7500), format_seconds(None)
    ('1.23 s', '3 min 04 s', '2 h 05 min', '-')
    """
    if s is None:
        return MISSING
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def format_time(t: float | None) -> str:
    """A wall-clock timestamp (seconds since the epoch) in local time, to the second."""
    if t is None:
        return MISSING
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


# -- tables ----------------------------------------------------------------------------------------
def text_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> str:
    """Columns aligned with two spaces between them; columns listed in ``right`` align right."""
    cells = [[str(h) for h in headers]] + [[_one_line(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right_set = set(right)
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right_set else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def html_table(
    headers: Sequence[str] | None,
    rows: Iterable[Sequence[object]],
    *,
    caption: str | None = None,
    empty: str = "none",
    right: Iterable[int] = (),
) -> str:
    """An HTML table; every header and cell is escaped. Cells that are :class:`_Raw` are not."""
    right_set = set(right)
    out = ['<table class="vmctl">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">{html.escape(caption)}</caption>')
    if headers is not None:
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    n = 0
    for row in rows:
        n += 1
        tds = []
        for i, cell in enumerate(row):
            style = ' style="text-align:right"' if i in right_set else ""
            tag = "th" if headers is None and i == 0 else "td"
            tds.append(f"<{tag}{style}>{_cell_html(cell)}</{tag}>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    if n == 0:
        span = len(headers) if headers else 1
        out.append(f'<tr><td colspan="{span}"><em>{html.escape(empty)}</em></td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


class _Raw(str):
    """A cell already rendered as safe HTML (built here from escaped parts)."""


def _cell_html(cell: object) -> str:
    if isinstance(cell, _Raw):
        return str(cell)
    return html.escape(_one_line(cell))


def _one_line(value: object) -> str:
    text = MISSING if value is None else str(value)
    return text.replace("\r", " ").replace("\n", " ")


def _state_badge(state: str) -> _Raw:
    colour = _STATE_COLOURS.get(state, "#57606a")
    return _Raw(f'<span style="color:{colour};font-weight:bold">{html.escape(state)}</span>')


# -- machines --------------------------------------------------------------------------------------
def _safe(fn: Any, default: object = "?") -> Any:
    try:
        return fn()
    except Exception:  # a display must never raise: the machine may be gone meanwhile
        return default


def _state_text(vm: Machine) -> str:
    try:
        return vm.state.value
    except MachineNotFound:
        return "not found"
    except Exception:  # a display must never raise
        return "?"


def machine_fields(vm: Machine) -> list[tuple[str, object]]:
    """(label, value) pairs describing ``vm``: what ``vmctl show`` and ``_repr_html_`` print."""
    state = _state_text(vm)
    pid = _safe(lambda: vm.pid, None)
    spec = _safe(lambda: vm.spec, None)
    rows: list[tuple[str, object]] = [
        ("name", vm.name),
        ("backend", vm.hypervisor.name),
        ("state", state),
        ("pid", pid),
    ]
    if spec is not None:
        rows += [
            ("cpus", spec.cpus),
            ("memory", format_bytes(spec.memory_mib * 1024 * 1024)),
            ("disk", spec.disk),
            ("overlay", "yes" if spec.overlay else "no"),
        ]
        if spec.kernel is not None:
            rows.append(("kernel", spec.kernel))
        if spec.initrd is not None:
            rows.append(("initrd", spec.initrd))
        if spec.cmdline is not None:
            rows.append(("cmdline", spec.cmdline))
        if spec.network is None:
            rows.append(("network", "none"))
        else:
            forwards = ", ".join(
                f"{pf.host_address}:{pf.host_port}->{pf.guest_port}/{pf.protocol}" for pf in spec.network.port_forwards
            )
            rows.append(("network", "user NAT" + (f" ({forwards})" if forwards else "")))
        for tag, path in spec.shared_dirs.items():
            rows.append((f"share {tag}", path))
        if spec.serial_log is not None:
            rows.append(("serial log", spec.serial_log))
    return rows


def machine_text(vm: Machine) -> str:
    """A two-column plain-text description of one machine."""
    fields = machine_fields(vm)
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {_one_line(value)}" for label, value in fields)


def machine_html(vm: Machine) -> str:
    """One machine as an HTML table (what Jupyter shows for a machine)."""
    rows = [(label, _state_badge(str(value)) if label == "state" else value) for label, value in machine_fields(vm)]
    return html_table(None, rows, caption=f"{type(vm).__name__} {vm.name}")


_MACHINE_HEADERS = ("NAME", "STATE", "CPUS", "MEMORY", "PID")


def _machine_row(vm: Machine) -> list[object]:
    state = _state_text(vm)
    spec = _safe(lambda: vm.spec, None)
    return [
        vm.name,
        state,
        spec.cpus if spec is not None else "?",
        format_bytes(spec.memory_mib * 1024 * 1024) if spec is not None else "?",
        _safe(lambda: vm.pid, None),
    ]


def machines_text(vms: Iterable[Machine]) -> str:
    """Machines as a plain-text table: name, state, CPUs, memory, pid."""
    return text_table(_MACHINE_HEADERS, [_machine_row(vm) for vm in vms], right=(2, 3, 4))


def machines_html(vms: Iterable[Machine]) -> str:
    rows = []
    for vm in vms:
        row = _machine_row(vm)
        row[1] = _state_badge(str(row[1]))
        rows.append(row)
    return html_table([h.lower() for h in _MACHINE_HEADERS], rows, empty="no machines", right=(2, 3, 4))


# -- usage -----------------------------------------------------------------------------------------
def _usage_fields(u: Usage) -> list[tuple[str, str]]:
    return [
        ("cpu time", format_seconds(u.cpu_seconds)),
        ("memory", format_bytes(u.memory_bytes)),
        ("disk read", format_bytes(u.disk_read_bytes)),
        ("disk written", format_bytes(u.disk_write_bytes)),
        ("net received", format_bytes(u.net_rx_bytes)),
        ("net sent", format_bytes(u.net_tx_bytes)),
    ]


def usage_text(u: Usage) -> str:
    """One :class:`~vmctl.types.Usage` as label/value lines; ``-`` where not measured."""
    fields = [("machine", u.machine), ("taken at", format_time(u.taken_at)), *_usage_fields(u)]
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {_one_line(value)}" for label, value in fields)


def usage_html(u: Usage) -> str:
    """One usage sample as an HTML table (what Jupyter shows for a :class:`~vmctl.types.Usage`)."""
    return html_table(None, _usage_fields(u), caption=f"usage of {u.machine} at {format_time(u.taken_at)}")


_USAGE_HEADERS = ("NAME", "CPU TIME", "MEMORY", "DISK READ", "DISK WRITTEN", "NET RX", "NET TX")


def _usage_row(u: Usage) -> list[object]:
    return [u.machine, *(value for _, value in _usage_fields(u))]


def usages_text(usages: Iterable[Usage]) -> str:
    """Several usage samples as one plain-text table."""
    return text_table(_USAGE_HEADERS, [_usage_row(u) for u in usages], right=range(1, 7))


def usages_html(usages: Iterable[Usage]) -> str:
    headers = [h.lower() for h in _USAGE_HEADERS]
    return html_table(headers, [_usage_row(u) for u in usages], empty="no machines", right=range(1, 7))


# -- rates between two usage samples ------------------------------------------------------------
_RATE_FIELDS = (
    ("disk_read_bytes", "disk_read_rate"),
    ("disk_write_bytes", "disk_write_rate"),
    ("net_rx_bytes", "net_rx_rate"),
    ("net_tx_bytes", "net_tx_rate"),
)


def usage_rates(before: Usage | None, after: Usage) -> dict[str, float | None]:
    """CPU % and byte rates between two samples of one machine; None where not computable.

    CPU % is of one host CPU, so a busy guest with two virtual CPUs can show 200.

    >>> from vmctl import Usage
    >>> a = Usage("m", taken_at=100.0, cpu_seconds=1.0, disk_read_bytes=0)
    >>> b = Usage("m", taken_at=102.0, cpu_seconds=2.0, disk_read_bytes=4096)
    >>> r = usage_rates(a, b)
    >>> r["cpu_percent"], r["disk_read_rate"], r["net_rx_rate"]
    (50.0, 2048.0, None)
    """
    result: dict[str, float | None] = {"cpu_percent": None}
    result.update({rate: None for _, rate in _RATE_FIELDS})
    if before is None:
        return result
    dt = after.taken_at - before.taken_at
    if dt <= 0:
        return result

    def delta(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b < a:  # a counter going back means a new host process
            return None
        return (b - a) / dt

    cpu = delta(before.cpu_seconds, after.cpu_seconds)
    result["cpu_percent"] = None if cpu is None else cpu * 100
    for field, rate in _RATE_FIELDS:
        result[rate] = delta(getattr(before, field), getattr(after, field))
    return result


# -- snapshots -------------------------------------------------------------------------------------
_SNAPSHOT_HEADERS = ("NAME", "CREATED", "MEMORY", "PARENT", "DESCRIPTION")


def _snapshot_row(s: Snapshot) -> list[object]:
    return [s.name, format_time(s.created), "yes" if s.has_memory else "no", s.parent, s.description]


def snapshots_text(snapshots: Iterable[Snapshot]) -> str:
    """Snapshots as a plain-text table, in the order given (oldest first from the API)."""
    return text_table(_SNAPSHOT_HEADERS, [_snapshot_row(s) for s in snapshots])


def snapshots_html(snapshots: Iterable[Snapshot]) -> str:
    return html_table(
        [h.lower() for h in _SNAPSHOT_HEADERS], [_snapshot_row(s) for s in snapshots], empty="no snapshots"
    )


def snapshot_html(s: Snapshot) -> str:
    """One snapshot as an HTML table (what Jupyter shows for a :class:`~vmctl.types.Snapshot`)."""
    return html_table([h.lower() for h in _SNAPSHOT_HEADERS], [_snapshot_row(s)])


# -- list results that render themselves ------------------------------------------------------------
class _Pretty:
    """``_repr_pretty_`` for IPython's terminal: the plain-text table instead of the list repr."""

    def _text(self) -> str:
        raise NotImplementedError

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text("[...]" if cycle else self._text())


class MachineList(_Pretty, list[Machine]):
    """A list of machines (such as ``Hypervisor.machines()`` returns) that shows as a table.

    ``repr()`` stays a list's; ``str()`` and IPython show the table, Jupyter shows HTML.
    """

    def _text(self) -> str:
        return machines_text(self)

    def __str__(self) -> str:
        return self._text()

    def _repr_html_(self) -> str:
        return machines_html(self)


class SnapshotList(_Pretty, list[Snapshot]):
    """A list of snapshots (such as ``Machine.snapshots()`` returns) that shows as a table."""

    def _text(self) -> str:
        return snapshots_text(self)

    def __str__(self) -> str:
        return self._text()

    def _repr_html_(self) -> str:
        return snapshots_html(self)


class UsageMap(_Pretty, dict[str, Usage]):
    """Usage keyed by machine name (such as ``Hypervisor.usage_all()`` returns) that shows as a table."""

    def _text(self) -> str:
        return usages_text(self.values())

    def __str__(self) -> str:
        return self._text()

    def _repr_html_(self) -> str:
        return usages_html(self.values())


@overload
def table(values: Mapping[str, Usage]) -> UsageMap: ...


@overload
def table(values: Iterable[Machine]) -> MachineList: ...


@overload
def table(values: Iterable[Snapshot]) -> SnapshotList: ...


def table(
    values: Mapping[str, Usage] | Iterable[Machine] | Iterable[Snapshot],
) -> UsageMap | MachineList | SnapshotList:
    """The display wrapper for what ``machines()``, ``snapshots()`` or ``usage_all()`` returned.

    >>> import vmctl
    >>> str(table([vmctl.Snapshot("s1", created=0, has_memory=False)])).splitlines()[0].split()
    ['NAME', 'CREATED', 'MEMORY', 'PARENT', 'DESCRIPTION']
    >>> table({})
    {}
    """
    if isinstance(values, Mapping):
        return UsageMap(values)
    items: list[object] = list(values)
    snapshots = [v for v in items if isinstance(v, Snapshot)]
    machines = [v for v in items if isinstance(v, Machine)]
    if items and len(snapshots) == len(items):
        return SnapshotList(snapshots)
    if len(machines) == len(items):
        return MachineList(machines)
    raise TypeError("table() takes machines, snapshots or a mapping of machine name to Usage")


# -- IPython and Jupyter ----------------------------------------------------------------------------
def load_ipython_extension(shell: Any) -> None:
    """Show machines, usage samples and snapshots as HTML tables (``%load_ext vmctl.display``)."""
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(Machine, machine_html)
    formatter.for_type(Usage, usage_html)
    formatter.for_type(Snapshot, snapshot_html)


def _register_with_running_ipython() -> None:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        load_ipython_extension(shell)


_register_with_running_ipython()
