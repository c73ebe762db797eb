"""Run every benchmark script and write ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only qemu,libvirt] [--output PATH]

Every ``benchmarks/bench_<name>.py`` is a benchmark (``bench_qemu.py``; ``bench_libvirt.py`` and
``bench_boinc.py`` join by being there). Each runs in its own process, one after the other (two
cores: running them side by side would measure each other), prints its tables as it goes, and
hands them over as JSON (see the protocol in ``benchlib.py``). A script that exits with status
77 is reported as skipped, with its reason; any other failure is reported and makes this command
exit non-zero, after the results of the others have been written.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import SKIPPED, Table, machine_info  # noqa: E402


def scripts(only: set[str] | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        found = [p for p in found if p.stem.removeprefix("bench_") in only]
    return found


def _run_teeing_stderr(argv: list[str], timeout: float) -> tuple[int | None, list[str]]:
    """Run ``argv`` with its output shown as it comes; return its status (None on timeout) and
    the last lines of its stderr (to say in RESULTS.md why it failed)."""
    tail: collections.deque[str] = collections.deque(maxlen=15)
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = None
    reader.join(5)
    return status, list(tail)


def run_one(script: Path, quick: bool, timeout: float) -> dict[str, object]:
    name = script.stem.removeprefix("bench_")
    print(f"\n##### {name}: {script.relative_to(ROOT)}{' --quick' if quick else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"vmctl-bench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if quick else [])
        started = time.monotonic()
        status, tail = _run_teeing_stderr(argv, timeout)
        took = time.monotonic() - started
        data: dict[str, object] = json.loads(out.read_text()) if out.exists() else {}
    data.update(name=name, script=str(script.relative_to(ROOT)), seconds=took, status=status)
    if status == SKIPPED:
        data["outcome"] = f"skipped: {data.get('skipped', 'no reason given')}"
    elif status == 0:
        data["outcome"] = "ok"
    elif status is None:
        data["outcome"] = f"failed: no result within {timeout:.0f} s"
    else:
        data["outcome"] = f"failed: exit status {status}"
    if status not in (0, SKIPPED):
        data["stderr"] = tail
    print(f"##### {name}: {data['outcome']} ({took:.0f} s)", flush=True)
    return data


def markdown(results: list[dict[str, object]], quick: bool, total: float) -> str:
    command = ".venv/bin/python benchmarks/run_all.py" + (" --quick" if quick else "")
    out = [
        "# vmctl benchmark results",
        "",
        f"Written by `{command}` in {total:.0f} s. Do not edit by hand: run it again.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {label} | {value} |" for label, value in machine_info(ROOT)]
    out += ["", "## Benchmarks", "", "| benchmark | script | outcome | seconds |", "|---|---|---|---:|"]
    for r in results:
        out.append(f"| {r['name']} | `{r['script']}` | {r['outcome']} | {float(str(r['seconds'])):.0f} |")
    for r in results:
        if r.get("stderr"):
            out += ["", f"### {r['name']}: {r['outcome']}", "", "```", *r["stderr"], "```"]  # type: ignore[misc]
    for r in results:
        tables = r.get("tables") or []
        if not tables and not r.get("notes"):
            continue
        out += ["", f"## {r.get('title') or r['name']}", ""]
        out += [f"- {n}" for n in r.get("notes") or []]  # type: ignore[union-attr]
        for t in tables:  # type: ignore[union-attr]
            out += ["", Table.from_dict(t).markdown()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a fast check (about a minute)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (qemu, libvirt, boinc, ...)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per benchmark script")
    args = parser.parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()} or None
    found = scripts(only)
    if not found:
        print("no benchmark scripts found", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = [run_one(script, args.quick, args.timeout) for script in found]
    args.output.write_text(markdown(results, args.quick, time.monotonic() - started))
    print(f"\nwrote {args.output}", flush=True)
    return 1 if any(str(r["outcome"]).startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
