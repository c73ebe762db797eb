"""vmctl-boinc: how fast a client's control message reaches the VM, and what supervising costs.

Part 1, control latency: a client double writes ``<suspend/>`` / ``<resume/>`` into the slot's
``boinc_mmap_file`` (the bytes the BOINC client writes) and the time until the VM is seen PAUSED /
RUNNING is taken, many times, with a random wait between trials so that the adapter's 100 ms loop
is met at every phase. On the memory backend the adapter runs in a thread of this process; on QEMU
it runs as the real program (``python -m vmctl.boinc``) beside a TCG test guest, and the state
is read through a second vmctl connection.

Part 2, supervision cost: the adapter's own CPU time (its process only, not the VM's) while it
supervises a running VM for ``--seconds`` (default 60), with the client double sending a heartbeat
every second, as the client does.

The results are printed beside vboxwrapper's design figures (1 s main loop; CPU time refreshed
every 10 s; every VM operation a VBoxManage process).

Run: ``.venv/bin/python benchmarks/bench_boinc.py [--quick] [--trials N] [--seconds S] [--skip-qemu] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

import vmctl
from vmctl.boinc.adapter import POLL_INTERVAL, STATUS_INTERVAL, Adapter
from vmctl.boinc.hostconfig import CONFIG_ENV
from vmctl.boinc.initdata import read_init_data
from vmctl.boinc.job import find_job_file, load_job
from vmctl.boinc.shm import Channel, open_shared_memory
from vmctl.boinc.slot import Slot
from vmctl.boinc.testing import FakeClient
from vmctl.registry import get_provider

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Report

VM = "boinc-wu_0_0"
STATE_POLL = 0.001
"""Seconds between two reads of the VM's state while waiting for a change, on both backends
(a QEMU state read is a file read now, no QMP round trip: it can be polled as often)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def heartbeats(client: FakeClient) -> Iterator[None]:
    """The client's once-a-second heartbeat, in a thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            client.heartbeat()
            stop.wait(1.0)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def make_slot(root: Path, job: str, files: dict[str, Path]) -> tuple[Path, FakeClient]:
    project = root / "projects" / "p"
    slot = root / "slots" / "0"
    project.mkdir(parents=True)
    slot.mkdir(parents=True)
    (project / "job.toml").write_text(job)
    (slot / "vmctl_job.toml").write_text("<soft_link>../../projects/p/job.toml</soft_link>\n")
    for name, path in files.items():
        # into the project directory (vmctl-boinc refuses slot links that lead out of it)
        try:
            os.link(path, project / name)
        except OSError:
            shutil.copyfile(path, project / name)
        (slot / name).write_text(f"<soft_link>../../projects/p/{name}</soft_link>\n")
    client = FakeClient(slot, project_dir=str(project), boinc_dir=str(root), checkpoint_period=3600.0)
    return slot, client


def measure_latency(
    client: FakeClient, state: Callable[[], vmctl.State], trials: int, poll: float
) -> dict[str, list[float]]:
    """Milliseconds from a message written to the VM seen in the matching state."""
    results: dict[str, list[float]] = {"suspend": [], "resume": []}
    for _ in range(trials):
        for message, wanted, key in (
            ("<suspend/>", vmctl.State.PAUSED, "suspend"),
            ("<resume/>", vmctl.State.RUNNING, "resume"),
        ):
            time.sleep(random.uniform(0.0, 2 * POLL_INTERVAL))
            client.control(message)
            started = time.perf_counter()
            deadline = started + 10
            while state() is not wanted:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the VM did not become {wanted.value} within 10 s of {message}")
                time.sleep(poll)
            results[key].append((time.perf_counter() - started) * 1000)
    return results


def own_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def supervise_cpu(pid: int, seconds: float) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of process ``pid`` alone over ``seconds``."""
    cpu0, wall0 = own_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return own_cpu(pid) - cpu0, time.monotonic() - wall0


# -- memory backend ---------------------------------------------------------------------------------


MEMORY_JOB = """backend = "memory"
image = "disk.img"
min_checkpoint_interval = 3600
"""


def bench_memory(root: Path, trials: int, seconds: float) -> dict[str, object]:
    root.mkdir(parents=True)
    disk = root / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    slot, client = make_slot(root / "latency", MEMORY_JOB, {"disk.img": disk})
    hv = vmctl.connect("memory", namespace=f"bench-{os.getpid()}")
    init = read_init_data(slot)
    adapter = Adapter(
        Slot(slot),
        init,
        load_job(find_job_file(slot)),
        open_shared_memory(slot, init.shm_key),
        connect=lambda backend, options: hv,
        reap_at_start=False,
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(adapter.run()), daemon=True)
    with heartbeats(client):
        thread.start()
        while not hv.machines() or hv.machine(VM).state is not vmctl.State.RUNNING:
            time.sleep(0.01)
        vm = hv.machine(VM)
        latency = measure_latency(client, lambda: vm.state, trials, poll=STATE_POLL)
        client.control("<abort/>")
        thread.join(30)
    client.close()

    # The supervision cost needs the adapter in a process of its own.
    slot, client = make_slot(root / "cpu", MEMORY_JOB, {"disk.img": disk})
    config = root / "host-boinc.toml"  # the host's backend profiles: the job names "memory"
    config.write_text('[profiles.memory]\nbackend = "memory"\noptions = { namespace = "bench" }\n')
    env = {**os.environ, CONFIG_ENV: str(config)}
    cpu, wall = run_program(slot, client, lambda: client.shm.pending(Channel.APP_STATUS), seconds, env)
    return {"latency": latency, "cpu": cpu, "wall": wall}


def run_program(
    slot: Path, client: FakeClient, ready: Callable[[], object], seconds: float, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Start ``python -m vmctl.boinc`` in ``slot``; measure its own CPU while it supervises."""
    log = open(slot.parent / "adapter.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmctl.boinc"], cwd=slot, stderr=log, stdin=subprocess.DEVNULL, env=env
    )
    try:
        with heartbeats(client):
            deadline = time.monotonic() + 120
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the adapter did not start: {(slot.parent / 'adapter.log').read_text()}")
                time.sleep(0.05)
            time.sleep(2)  # past start-up
            return supervise_cpu(proc.pid, seconds)
    finally:
        client.control("<abort/>")
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        client.close()


# -- QEMU backend -------------------------------------------------------------------------------------


def bench_qemu(root: Path, trials: int, seconds: float) -> dict[str, object]:
    from vmctl.testguest import ensure_test_guest

    guest = ensure_test_guest()
    job = f"""backend = "qemu"
image = "disk.qcow2"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "{guest.cmdline}"
min_checkpoint_interval = 3600
[backend_options]
accel = "tcg"
"""
    files = {"disk.qcow2": guest.disk, "vmlinuz": guest.kernel, "initrd.img": guest.initrd}
    slot, client = make_slot(root / "qemu", job, files)
    holder: dict[str, vmctl.Machine] = {}

    def running() -> bool:
        if not (slot / "vm" / VM / "machine.json").exists():
            return False
        if "vm" not in holder:
            holder["vm"] = vmctl.connect("qemu", state_dir=slot / "vm", accel="tcg").machine(VM)
        return holder["vm"].state is vmctl.State.RUNNING

    result: dict[str, object] = {}
    log = open(slot.parent / "adapter.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vmctl.boinc"], cwd=slot, stderr=log, stdin=subprocess.DEVNULL)
    try:
        with heartbeats(client):
            deadline = time.monotonic() + 120
            while not running():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the adapter did not start: {(slot.parent / 'adapter.log').read_text()}")
                time.sleep(0.05)
            time.sleep(2)
            vm = holder["vm"]
            state_cost = []
            for _ in range(50):
                t = time.perf_counter()
                _ = vm.state
                state_cost.append((time.perf_counter() - t) * 1000)
            result["state_query_ms"] = statistics.median(state_cost)
            result["latency"] = measure_latency(client, lambda: vm.state, trials, poll=STATE_POLL)
            cpu, wall = supervise_cpu(proc.pid, seconds)
            result["cpu"], result["wall"] = cpu, wall
    finally:
        client.control("<abort/>")
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        client.close()
    return result


# -- report ---------------------------------------------------------------------------------------------


def latency_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {percentile(values, 0.99):.1f} ms"


def report_results(report: Report, results: dict[str, dict[str, object]], trials: int, seconds: float) -> None:
    names = list(results)
    table = report.table(
        f"vmctl-boinc: control latency ({trials} trials) and supervision cost ({seconds:g} s)",
        ["", *(f"vmctl-boinc, {n}" for n in names), "vboxwrapper (design)"],
    )
    table.add("control poll period", *(f"{POLL_INTERVAL * 1000:.0f} ms" for _ in names), "1000 ms main loop")
    for key, what in (
        ("suspend", "<suspend/> -> VM paused, p50 / p99"),
        ("resume", "<resume/> -> VM running, p50 / p99"),
    ):
        cells = []
        for n in names:
            lat = results[n]["latency"]
            assert isinstance(lat, dict)
            cells.append(latency_cell(lat[key]))
        table.add(what, *cells, "0-1000 ms + a VBoxManage run")
    table.add("CPU time reported every", *(f"{STATUS_INTERVAL:g} s" for _ in names), "1 s, refreshed every 10 s")
    cells = []
    for n in names:
        cpu, wall = results[n]["cpu"], results[n]["wall"]
        assert isinstance(cpu, float) and isinstance(wall, float)
        cells.append(f"{cpu:.2f} s CPU in {wall:.0f} s = {100 * cpu / wall:.2f}%")
    table.add("adapter's own CPU while supervising", *cells, "-")
    table.note(
        "latency: from the message written into boinc_mmap_file to the VM seen in the new state, its "
        f"state read every {STATE_POLL * 1000:g} ms on both backends"
    )
    if "qemu" in results and isinstance(q := results["qemu"].get("state_query_ms"), float):
        table.note(f"QEMU: each sample includes one vm.state query through a second connection ({q:.1f} ms)")
    table.note("vboxwrapper: its main loop looks at the client's requests once a second, then runs VBoxManage")
    report.show(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 trials, 10 s of supervision (a fast check)")
    parser.add_argument("--trials", type=int, default=None, help="suspend/resume pairs per backend (default 100)")
    parser.add_argument("--seconds", type=float, default=None, help="supervision time for the CPU measure (default 60)")
    parser.add_argument("--skip-qemu", action="store_true", help="memory backend only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    trials = args.trials or (20 if args.quick else 100)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    report = Report("BOINC adapter", args)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-boinc-") as tmp:
        root = Path(tmp)
        print("memory backend ...", flush=True)
        results["memory"] = bench_memory(root / "memory", trials, seconds)
        if args.skip_qemu:
            report.note("QEMU part skipped (--skip-qemu)")
        elif (missing := get_provider("qemu").unavailable()) is not None:
            report.note(f"QEMU part skipped: {missing[0]}")
        else:
            print("QEMU backend (TCG test guest) ...", flush=True)
            results["qemu"] = bench_qemu(root / "qemu-run", trials, seconds)
    report_results(report, results, trials, seconds)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
