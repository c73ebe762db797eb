"""Many callers, a few machines (issue 21): verbs per second and wrong answers per backend.

The long setting of the stress driver in ``tests/stress.py``: for each backend harness of the
contract suite, ``--callers`` processes (each with its own connection), then as many threads
sharing one connection, send seeded random verbs at ``--machines`` shared machines for
``--seconds`` each. A wrong answer is one that is neither a success nor a typed refusal
(``InvalidState``, ``SnapshotNotFound``, ``SnapshotExists``, ``OperationTimeout``, ``Unsupported``
where the backend lacks the verb), or that outlived its timeout. Afterwards each machine's state
must agree with the world, and destroying the machines must leave nothing behind.

The default (30 s a mode, about 7 minutes in all) fits ``run_all.py``; the long setting of the
issue is ``--seconds 300``: 10 minutes per backend, processes and threads.

Run: ``.venv/bin/python benchmarks/bench_stress.py [--quick] [--seconds 30]
[--backends qemu,memory] [--callers 4] [--machines 3] [--seed 21] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import vmctl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report

from tests.stress import (
    lacking_verbs,
    run_processes,
    run_threads,
    summary,
    world_disagreements,
    wrong_answers,
)
from tests.test_stress import BACKENDS, _harness_class

TIMEOUT = 30.0


def bench(hid: str, seconds: float, callers: int, machines: int, seed: int) -> list[dict[str, Any]]:
    harness = _harness_class(hid)()
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"bench-stress-{hid}-") as tmp:
        harness.setup(Path(tmp))
        try:
            hv = harness.connect()
            names = [f"bs{os.getpid() % 10000}-{i}" for i in range(machines)]
            for name in names:
                hv.create(harness.spec(name))
            lacks = lacking_verbs(hv.capabilities, harness.peer_lacks)
            modes = ["processes", "threads"] if harness.multi_process else ["threads"]
            for mode in modes:
                for name in names:  # destroyed by someone else's cleanup on a shared daemon: make it again
                    if name not in {vm.name for vm in hv.machines()}:
                        print(f"{hid}: {name} was gone before the {mode} mode; made again", flush=True)
                        hv.create(harness.spec(name))
                backend = BACKENDS[hid]
                if mode == "processes":
                    result = run_processes(harness, names, callers, seconds, seed, TIMEOUT, backend.verbs())
                else:
                    result = run_threads(harness.connect(), names, callers, seconds, seed, TIMEOUT, backend.verbs())
                wrong = wrong_answers(result, lacks, TIMEOUT, backend.expected)
                row = {"backend": hid, "mode": mode, **summary(result, wrong)}
                row["world"] = [p for n in names for p in world_disagreements(hv, n, backend.has_process)]
                rows.append(row)
                print(json.dumps(row), flush=True)
            for name in names:
                with contextlib.suppress(vmctl.MachineNotFound):
                    hv.machine(name).destroy()
            leaks = [x for name in names for x in harness.leftovers(name)]
            rows[-1]["leaks"] = leaks
        finally:
            harness.teardown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s a mode instead of --seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--seconds", type=float, default=30, help="per mode and backend (300: the long setting)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    report = Report("Many callers, a few machines (issue 21)", args)
    table = report.table(
        f"{args.callers} callers, {args.machines} machines, {seconds:g} s a mode, seed {args.seed}",
        ["backend", "mode", "verbs", "verbs/s", "wrong", "hung", "world disagrees", "leaks"],
    )
    rows = []
    for hid in args.backends.split(","):
        rows += bench(hid, seconds, args.callers, args.machines, args.seed)
    for r in rows:
        table.add(
            r["backend"], r["mode"], r["verbs"], r["verbs_per_second"], r["wrong"], r["hung"],
            len(r["world"]), len(r.get("leaks", [])),
        )  # fmt: skip
        for k in r["wrong_kinds"]:
            table.note(f"{r['backend']}/{r['mode']}: {k['count']} x {k['verb']} -> {k['outcome']}: {k['message']}")
        for problem in r["world"] + r.get("leaks", []):
            table.note(f"{r['backend']}/{r['mode']}: {problem}")
    for hid in args.backends.split(","):
        for verb, why in BACKENDS[hid].left_out.items():
            table.note(f"{hid}: {verb} left out of the mix: {why}")
    report.show(table)
    report.finish()


if __name__ == "__main__":
    main()
