"""Many idle QEMU machines started by one process: its threads, and a state sweep per machine.

Issue 17's targets: 100 idle TCG machines started by one process, that process's thread count
independent of N; a state sweep (``[m.state for m in hv.machines()]``) under 1 ms per paused
machine, at a cost per machine that does not grow with N. The machines are 64 MiB TCG guests
without a kernel on a disk without a boot loader: the firmware finds nothing to boot and idles,
so that 100 of them fit on two cores. Each step starts machines up to N (this process's thread
count is taken with all N running), pauses the new ones, then sweeps all N paused machines,
interleaved with ``usage_all()``.

Run: ``.venv/bin/python benchmarks/bench_qemu_many.py [--quick] [--json PATH]``
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

import vmctl
from vmctl.testguest import ensure_test_guest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Report, median, ms, parse_args, timed

MEMORY_MIB = 64
STEPS = (10, 50, 100)
QUICK_STEPS = (5, 10)
REPEATS = 7
NEEDED_PER_VM = 160 * 2**20
"""Host memory kept free per machine still to start (QEMU's RSS with a 64 MiB guest, a keeper)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    report = Report("QEMU backend: many idle machines (issue 17)", args)
    if shutil.which("qemu-system-x86_64") is None:
        report.skip("qemu-system-x86_64 is not installed")
    guest = ensure_test_guest()
    steps = QUICK_STEPS if args.quick else STEPS
    work = Path(tempfile.mkdtemp(prefix="vmctl-bench-many-"))
    hv = vmctl.connect("qemu", state_dir=work / "state", accel="tcg")
    me = psutil.Process()
    base_threads = me.num_threads()
    table = report.table(
        f"{' / '.join(map(str, steps))} idle {MEMORY_MIB} MiB TCG machines started by this process",
        ["N", "threads of this process", "+threads since N=0", "start (ms/VM)", "state sweep, running (ms/VM)",
         "state sweep, paused (ms/VM)", "usage_all(), paused (ms/VM)", "host memory available (GiB)"],
    )  # fmt: skip
    table.add(0, base_threads, 0, "-", "-", "-", "-", f"{psutil.virtual_memory().available / 2**30:.1f}")
    vms: list[vmctl.Machine] = []
    try:
        for n in steps:
            if psutil.virtual_memory().available < (n - len(vms)) * NEEDED_PER_VM + 2 * 2**30:
                report.note(f"stopped before N={n}: not enough free host memory")
                break
            fresh: list[vmctl.Machine] = []
            started = time.perf_counter()
            while len(vms) < n:
                vm = hv.create(vmctl.MachineSpec(name=f"idle{len(vms):03d}", disk=guest.disk, memory_mib=MEMORY_MIB))
                vm.start()
                vms.append(vm)
                fresh.append(vm)
            took = time.perf_counter() - started
            threads = me.num_threads()
            running = median([timed(lambda: [m.state for m in hv.machines()]) for _ in range(3)])
            for vm in fresh:
                vm.pause()
            if any(m.state is not vmctl.State.PAUSED for m in hv.machines()):
                raise RuntimeError("a machine is not PAUSED after pausing all")
            sweeps, usages = [], []
            for _ in range(REPEATS):
                sweeps.append(timed(lambda: [m.state for m in hv.machines()]))
                usages.append(timed(hv.usage_all))
            table.add(
                n,
                threads,
                threads - base_threads,
                ms(took / len(fresh)),
                ms(running / n),
                ms(median(sweeps) / n),
                ms(median(usages) / n),
                f"{psutil.virtual_memory().available / 2**30:.1f}",
            )
            print(table.text(), flush=True)
    finally:
        for vm in vms:
            with contextlib.suppress(vmctl.VmctlError):
                vm.destroy()
        shutil.rmtree(work, ignore_errors=True)
    table.note(
        "Machines are started one after the other by this process; a start returns when QEMU answers "
        "QMP. Each machine has a keeper process (its parent) that this process reaps on vmctl's one "
        "event-loop thread (pidfds): no thread per machine."
    )
    table.note(
        f"state sweep = `[m.state for m in hv.machines()]`, median of {REPEATS} (3 while running, "
        "with the guests' firmware still busy), divided by N: each machine's record and its keeper's "
        "run.json read once, its QEMU process checked, no QMP round trip."
    )
    report.show(table)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
