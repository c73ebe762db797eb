"""Shared helpers for the benchmark scripts: timing statistics, tables, the machine description,
and the small protocol between a ``bench_*.py`` script and ``run_all.py``.

The protocol (for anyone adding ``benchmarks/bench_<name>.py``):

- the script runs alone (``python benchmarks/bench_<name>.py [--quick]``) and prints its tables;
- ``--quick`` makes it finish in well under a minute with fewer repetitions;
- ``--json PATH`` makes it also write ``{"title", "tables": [...], "notes": [...]}`` to PATH, each
  table as :meth:`Table.to_dict` gives it; :class:`Report` does both for you;
- exit status 0 on success; :data:`SKIPPED` (77) with a ``"skipped"`` reason in the JSON when the
  peer it measures is not available here (:meth:`Report.skip`); anything else is a failure.

Typical use::

    report = Report("libvirt", parse_args("libvirt benchmarks"))
    table = report.table("Verb latency", ["verb", "vmctl median ms", ...])
    table.add("pause", ...)
    report.finish()
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

SKIPPED = 77
"""Exit status of a benchmark that cannot run here (its peer is missing)."""


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for a fast check)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


# -- statistics ----------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) with linear interpolation between order statistics."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def p95(samples: Sequence[float]) -> float:
    return percentile(samples, 0.95)


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action`` took (monotonic clock)."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    """Milliseconds with a precision that suits the size."""
    value = seconds * 1000
    if value != value:  # NaN
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def mib(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


# -- tables --------------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        return cls(data["title"], list(data["columns"]), [list(r) for r in data["rows"]], list(data.get("notes", [])))

    def text(self) -> str:
        widths = [
            max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c) for i, c in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            first, *rest = cells
            return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

        out = [self.title, "=" * len(self.title), line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self, level: int = 3) -> str:
        def esc(cell: str) -> str:
            return cell.replace("|", "\\|")

        out = [f"{'#' * level} {self.title}", "", "| " + " | ".join(esc(c) for c in self.columns) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|")
        out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


class Report:
    """The tables of one benchmark script: printed as they are finished, written as JSON at the end."""

    def __init__(self, title: str, args: argparse.Namespace) -> None:
        self.title = title
        self.args = args
        self.tables: list[Table] = []
        self.notes: list[str] = []

    def table(self, title: str, columns: list[str]) -> Table:
        table = Table(title, columns)
        self.tables.append(table)
        return table

    def show(self, table: Table) -> None:
        print("\n" + table.text() + "\n", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _write(self, extra: dict[str, Any]) -> None:
        if self.args.json is not None:
            data = {"title": self.title, "tables": [t.to_dict() for t in self.tables], "notes": self.notes, **extra}
            Path(self.args.json).write_text(json.dumps(data, indent=1))

    def finish(self) -> None:
        self._write({})

    def skip(self, reason: str) -> NoReturn:
        print(f"{self.title}: skipped: {reason}", flush=True)
        self._write({"skipped": reason})
        sys.exit(SKIPPED)


# -- the machine ---------------------------------------------------------------------------------
def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.platform()
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.MULTILINE)
    return match.group(1) if match else platform.platform()


def _git_commit(root: Path) -> str:
    if shutil.which("git") is None:
        return "unknown"
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    commit = out.stdout.strip() or "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine_info(root: Path) -> list[tuple[str, str]]:
    """What the numbers were measured on, as (label, value) pairs."""
    import psutil

    mem = psutil.virtual_memory().total
    physical = psutil.cpu_count(logical=False)
    try:
        import qemu.qmp

        qmp_version = getattr(qemu.qmp, "__version__", None) or _pkg_version("qemu.qmp")
    except ImportError:
        qmp_version = "not installed"
    kvm = "present" if os.path.exists("/dev/kvm") else "absent"
    return [
        ("Date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("CPU", _cpu_model()),
        ("Cores", f"{os.cpu_count()} logical ({physical or '?'} physical)"),
        ("Memory", f"{mem / (1 << 30):.1f} GiB"),
        ("OS", _os_release()),
        ("Kernel", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("QEMU", _first_line(["qemu-system-x86_64", "--version"])),
        ("qemu-img", _first_line(["qemu-img", "--version"])),
        ("Accelerator", f"TCG (/dev/kvm {kvm}; guests hang under KVM here)"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("qemu.qmp", qmp_version),
        ("vmctl", f"{_pkg_version('vmctl')}, commit {_git_commit(root)}"),
    ]


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def summarize(samples: Iterable[float]) -> tuple[float, float]:
    values = list(samples)
    return median(values), p95(values)
