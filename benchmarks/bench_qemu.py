"""QEMU backend benchmarks: vmctl against raw QMP, scale, overlay creation, checkpoint cost.

    .venv/bin/python benchmarks/bench_qemu.py [--quick] [--json PATH]

1. Verb latency. Two TCG guests boot side by side from the same base image: one is a vmctl
   machine; the other is a QEMU started by hand with the argv vmctl would use
   (``vmctl_qemu._command.qemu_argv``) and driven with ``qemu.qmp`` directly over one open
   connection, sending the same QMP commands as vmctl (polling jobs and migrations on vmctl's
   schedule: 1 ms, doubling up to 20 ms). Each round runs a verb on one and then the other,
   alternating which goes first, so that drift (guest activity, page cache) falls on both. The
   "raw, new connection" column is the raw path opening a QMP connection for the call, as vmctl
   must: QEMU serves one client per socket and vmctl is used from many processes.
2. Scale: 1, 5, 10 and 20 guests from one base image, started one after the other; time until
   all are RUNNING, the memory vmctl itself adds per machine (the keeper process that parents
   each QEMU, and this process's own growth), and one ``usage_all()`` / state sweep.
3. Overlay creation time against the base image's virtual size (64 MiB - 8 GiB, sparse).
4. Checkpoint cost: 20 live snapshots in a row, pruned to the last two or kept, with snapshot,
   prune and revert times and the overlay's allocated size after each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from qemu.qmp import QMPClient, QMPError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report, mib, ms, p95, parse_args, ratio, timed
from benchlib import median as med

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest
from vmctl_qemu._command import qemu_argv

MEMORY_MIB = 128


def backoff() -> Iterator[float]:
    """The pauses vmctl polls QEMU with (1 ms, doubling up to 20 ms); the raw path uses the same."""
    delay = 0.001
    while True:
        yield delay
        delay = min(delay * 2, 0.02)


BOOT_TIMEOUT = 120


# -- the raw path --------------------------------------------------------------------------------
class RawQemu:
    """A QEMU started by hand with vmctl's argv, driven over one qemu.qmp connection."""

    def __init__(self, directory: Path, argv: list[str]) -> None:
        self.dir = directory
        self.argv = argv
        self.loop = asyncio.new_event_loop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None
        self.jobs = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        assert self.qmp is not None
        return self.run(self.qmp.execute(name, args))

    def launch(self, *extra: str) -> None:
        for stale in ("qmp.sock", "state.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        with open(self.dir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv, *extra], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.qmp = QMPClient("raw")
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"raw QEMU exited: {(self.dir / 'qemu.log').read_text()[-800:]}")
            if (self.dir / "qmp.sock").exists():
                try:
                    self.run(self.qmp.connect(str(self.dir / "qmp.sock")))
                    return
                except (QMPError, OSError):
                    self.qmp = QMPClient("raw")
            if time.monotonic() > deadline:
                raise RuntimeError("raw QEMU did not open its monitor")
            time.sleep(0.002)

    def fresh(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """One command over a connection of its own (to the second monitor, as vmctl's queries)."""

        async def once() -> Any:
            client = QMPClient("raw-once")
            await client.connect(str(self.dir / "state.sock"))
            try:
                return await client.execute(name, args)
            finally:
                await client.disconnect()

        return self.run(once())

    def usage(self, fresh: bool = False) -> None:
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        with proc.oneshot():
            proc.cpu_times()
            proc.memory_info()
            proc.io_counters()
        (self.fresh if fresh else self.cmd)("query-blockstats")

    def _job(self, command: str, args: dict[str, Any]) -> None:
        self.jobs += 1
        job = f"raw-{self.jobs}"
        self.cmd(command, {"job-id": job, **args})
        pauses = backoff()
        while True:
            found = {j["id"]: j for j in self.cmd("query-jobs")}[job]
            if found["status"] == "concluded":
                self.cmd("job-dismiss", {"id": job})
                if found.get("error"):
                    raise RuntimeError(found["error"])
                return
            time.sleep(next(pauses))

    def snapshot(self, tag: str) -> None:
        self._job("snapshot-save", {"tag": tag, "vmstate": "disk0", "devices": ["disk0"]})

    def revert(self, tag: str) -> None:
        self._job("snapshot-load", {"tag": tag, "vmstate": "disk0", "devices": ["disk0"]})
        if self.cmd("query-status")["status"] != "running":
            self.cmd("cont")

    def delete(self, tag: str) -> None:
        self._job("snapshot-delete", {"tag": tag, "devices": ["disk0"]})

    def suspend(self) -> None:
        assert self.qmp is not None and self.proc is not None
        tmp = self.dir / "state.bin.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.cmd("stop")
            self.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 34})
            self.qmp.send_fd_scm(fd)
            self.cmd("getfd", {"fdname": "save"})
            self.cmd("migrate", {"uri": "fd:save"})
            pauses = backoff()
            while (status := self.cmd("query-migrate")["status"]) != "completed":
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"raw migration {status}")
                time.sleep(next(pauses))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / "state.bin")
        self.quit()

    def restore(self) -> None:
        self.launch("-incoming", "defer")
        assert self.qmp is not None
        with open(self.dir / "state.bin", "rb") as f:
            self.qmp.send_fd_scm(f.fileno())
            self.cmd("getfd", {"fdname": "restore"})
            self.cmd("migrate-incoming", {"uri": "fd:restore"})
            pauses = backoff()
            while (status := self.cmd("query-status")["status"]) == "inmigrate":
                time.sleep(next(pauses))
        (self.dir / "state.bin").unlink()
        if status != "running":
            self.cmd("cont")

    def quit(self) -> None:
        assert self.qmp is not None and self.proc is not None
        with contextlib.suppress(QMPError, OSError, EOFError):
            self.cmd("quit")
        with contextlib.suppress(Exception):
            self.run(self.qmp.disconnect())
        self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(Exception):
            if self.qmp is not None:
                self.run(self.qmp.disconnect())
        self.loop.close()


# -- helpers -------------------------------------------------------------------------------------
def wait_console(log: Path, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_bytes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {log} after {timeout} s")
        time.sleep(0.1)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def filesystem_of(path: Path) -> str:
    best = ("", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path).startswith(mount) and len(mount) > len(best[0]):
            best = (mount, fstype)
    return f"{best[1]} ({best[0]})"


def spec(guest: TestGuest, name: str, logs: Path, disk: Path | None = None) -> vmctl.MachineSpec:
    return vmctl.MachineSpec(
        name=name,
        disk=disk or guest.disk,
        kernel=guest.kernel,
        initrd=guest.initrd,
        cmdline=guest.cmdline,
        memory_mib=MEMORY_MIB,
        serial_log=logs / f"{name}.log",
    )


def destroy_all(vms: list[vmctl.Machine]) -> None:
    for vm in vms:
        vm.destroy()


def create_into(made: list[vmctl.Machine], hv: vmctl.Hypervisor, machine: vmctl.MachineSpec) -> None:
    made.append(hv.create(machine))


def raw_sweep(loop: asyncio.AbstractEventLoop, machines: list[tuple[Path, int]]) -> None:
    """What a process of its own must do for every machine's usage without vmctl: the QEMU
    process's counters (psutil) and query-blockstats over a new QMP connection."""

    async def blockstats(sock: Path) -> Any:
        client = QMPClient("raw-sweep")
        await client.connect(str(sock))
        try:
            return await client.execute("query-blockstats")
        finally:
            await client.disconnect()

    for directory, pid in machines:
        proc = psutil.Process(pid)
        with proc.oneshot():
            proc.cpu_times()
            proc.memory_info()
            proc.io_counters()
        loop.run_until_complete(blockstats(directory / "state.sock"))


class Samples:
    def __init__(self) -> None:
        self.data: dict[str, list[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        self.data.setdefault(key, []).append(seconds)

    def __getitem__(self, key: str) -> list[float]:
        return self.data.get(key, [])


# -- 1. verb latency -----------------------------------------------------------------------------
def bench_latency(report: Report, guest: TestGuest, work: Path, quick: bool) -> vmctl.Machine:
    logs = work / "logs"
    hv = vmctl.connect("qemu", state_dir=work / "state", accel="tcg")
    vm = hv.create(spec(guest, "lat-vmctl", logs))
    raw_dir = work / "raw"
    raw_dir.mkdir()
    overlay = raw_dir / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(guest.disk), str(overlay)],
                   check=True, timeout=60)  # fmt: skip
    raw_spec = spec(guest, "lat-raw", logs)
    argv = qemu_argv(
        raw_spec,
        binary="qemu-system-x86_64",
        accel="tcg",
        machine_type="q35",
        disk=overlay,
        disk_format="qcow2",
        serial_log=logs / "lat-raw.log",
    )
    raw = RawQemu(raw_dir, argv)
    vm.start()
    raw.launch()
    try:
        for log in (logs / "lat-vmctl.log", logs / "lat-raw.log"):
            wait_console(log, b"VMCTL-GUEST READY", BOOT_TIMEOUT)
        s = Samples()

        def pair(key: str, i: int, ours: Callable[[], Any], theirs: Callable[[], Any]) -> None:
            first, second = ((f"{key}/vmctl", ours), (f"{key}/raw", theirs))[:: 1 if i % 2 == 0 else -1]
            s.add(first[0], timed(first[1]))
            s.add(second[0], timed(second[1]))

        fast_rounds = 50 if quick else 200
        for i in range(fast_rounds):
            pair("state", i, lambda: vm.state, lambda: raw.cmd("query-status"))
            s.add("state/fresh", timed(lambda: raw.fresh("query-status")))
            pair("usage", i, vm.usage, raw.usage)
            s.add("usage/fresh", timed(lambda: raw.usage(fresh=True)))
            pair("pause", i, vm.pause, lambda: raw.cmd("stop"))
            pair("resume", i, vm.resume, lambda: raw.cmd("cont"))
            s.add("pause/fresh", timed(lambda: raw.fresh("stop")))  # a connection each, as vmctl
            s.add("resume/fresh", timed(lambda: raw.fresh("cont")))

        slow_rounds = 5 if quick else 15
        for i in range(slow_rounds):
            tag = f"b{i}"
            pair("snapshot", i, functools.partial(vm.snapshot, tag), functools.partial(raw.snapshot, tag))
            pair("revert", i, functools.partial(vm.revert, tag), functools.partial(raw.revert, tag))
            pair("delete_snapshot", i, functools.partial(vm.delete_snapshot, tag), functools.partial(raw.delete, tag))
        save_rounds = 4 if quick else 10
        for i in range(save_rounds):
            pair("suspend", i, vm.suspend, raw.suspend)
            pair("start-restore", i, vm.start, raw.restore)
        assert vm.state is vmctl.State.RUNNING and raw.cmd("query-status")["status"] == "running"
    finally:
        raw.kill()

    table = report.table(
        "Verb latency: vmctl against raw QMP (interleaved, ms)",
        [
            "verb",
            "n",
            "vmctl median",
            "vmctl p95",
            "raw median",
            "raw p95",
            "ratio",
            "raw, new connection",
            "ratio to new connection",
        ],
    )
    for verb in ("pause", "resume", "state", "usage", "snapshot", "revert", "delete_snapshot", "suspend",
                 "start-restore"):  # fmt: skip
        ours, theirs, fresh = s[f"{verb}/vmctl"], s[f"{verb}/raw"], s[f"{verb}/fresh"]
        table.add(
            verb,
            len(ours),
            ms(med(ours)),
            ms(p95(ours)),
            ms(med(theirs)),
            ms(p95(theirs)),
            ratio(med(ours), med(theirs)),
            ms(med(fresh)) if fresh else "-",
            ratio(med(ours), med(fresh)) if fresh else "-",
        )
    table.note(
        f"{MEMORY_MIB} MiB TCG guests, booted and idle; both run during the whole measurement. "
        f"State directory on {filesystem_of(work)}."
    )
    table.note(
        "vmctl per verb: reads its record, checks the QEMU process, takes the machine's lock, settles "
        "leftovers of killed processes and checks the state under the lock (both from the run state "
        "the keeper holds from QEMU's events, no QMP), opens one QMP session on a blocking socket "
        "(the capabilities negotiation goes out with the command: one exchange), and waits for the "
        "keeper to report the run state it caused. "
        "vmctl's state is read from the keeper's run.json: no QMP round trip."
    )
    table.note(
        "snapshot, revert and delete_snapshot in vmctl also run `qemu-img info` to list snapshots "
        "(duplicate names, lookup); start-restore starts the keeper (a Python process) before QEMU."
    )
    report.show(table)
    return vm


# -- 2. scale ------------------------------------------------------------------------------------
def bench_scale(report: Report, guest: TestGuest, work: Path, quick: bool) -> None:
    hv = vmctl.connect("qemu", state_dir=work / "scale", accel="tcg")
    logs = work / "scale-logs"
    logs.mkdir()
    me = psutil.Process()
    table = report.table(
        "Scale: N guests from one base image",
        ["N", "start all (s)", "per VM (ms)", "keeper USS/VM (MiB)", "keeper RSS/VM (MiB)",
         "this process +KiB/VM", "+threads/VM", "QEMU RSS/VM (MiB)", "usage_all() (ms)", "state sweep (ms)",
         "usage_all(), paused (ms)", "raw sweep, paused (ms)", "usage_all() per paused VM (ms)",
         "state sweep, paused (ms)", "destroy all (s)"],
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    for n in (1, 5, 10, 20):
        base_rss, base_threads = me.memory_info().rss, me.num_threads()
        vms = [hv.create(spec(guest, f"scale{n}-{i}", logs)) for i in range(n)]
        started = time.perf_counter()
        for vm in vms:
            vm.start()
        took = time.perf_counter() - started
        assert all(vm.state is vmctl.State.RUNNING for vm in hv.machines())
        keepers, qemus = [], []
        pids: list[tuple[Path, int]] = []
        for vm in vms:
            run = json.loads((vm.dir / "run.json").read_text())
            pids.append((vm.dir, run["qemu_pid"]))
            keeper = psutil.Process(run["keeper_pid"]).memory_full_info()
            keepers.append((keeper.uss, keeper.rss))
            qemus.append(psutil.Process(run["qemu_pid"]).memory_info().rss)
        grew = (me.memory_info().rss - base_rss) / n
        threads = (me.num_threads() - base_threads) / n
        sweeps = [timed(hv.usage_all) for _ in range(3 if quick else 7)]
        states = [timed(lambda: [m.state for m in hv.machines()]) for _ in range(3 if quick else 7)]
        for vm in vms:  # the same sweeps with the CPUs free: what vmctl itself costs
            vm.pause()
        sweeps_idle, raw_idle = [], []
        for i in range(3 if quick else 7):  # interleaved, alternating which goes first
            steps = [(sweeps_idle, hv.usage_all), (raw_idle, functools.partial(raw_sweep, loop, pids))]
            for into, action in steps[:: 1 if i % 2 == 0 else -1]:
                into.append(timed(action))
        states_idle = [timed(lambda: [m.state for m in hv.machines()]) for _ in range(3 if quick else 7)]
        gone = timed(functools.partial(destroy_all, vms))
        table.add(
            n,
            f"{took:.2f}",
            ms(took / n),
            mib(sum(k[0] for k in keepers) / n),
            mib(sum(k[1] for k in keepers) / n),
            f"{grew / 1024:.0f}",
            f"{threads:.1f}",
            mib(sum(qemus) / n),
            ms(med(sweeps)),
            ms(med(states)),
            ms(med(sweeps_idle)),
            ms(med(raw_idle)),
            ms(med(sweeps_idle) / n),
            ms(med(states_idle)),
            f"{gone:.2f}",
        )
    table.note(
        f"{MEMORY_MIB} MiB TCG guests on {os.cpu_count()} cores, started one after the other; a start "
        "returns when QEMU answers QMP, i.e. RUNNING. Start times and the first two sweeps are measured "
        "while the guests boot, with both CPUs busy: every QMP answer waits for a QEMU main loop to be "
        "scheduled. The 'paused' sweeps are taken after pausing every guest: vmctl's own cost."
    )
    table.note(
        "usage_all(): one pass over the machine directories, each machine's process tree measured "
        "from the kernel's children lists (no scan of the process table per machine); a paused "
        "machine's disk byte counts are the ones kept in its blockio.json when it paused (a paused "
        "guest does no I/O), so no QMP round trip. raw sweep = per machine, what a process of its own "
        "must do without vmctl: psutil on the QEMU process and query-blockstats over a new QMP "
        "connection; interleaved with usage_all()."
    )
    table.note(
        "The keeper is a small Python process per VM (python -S -I, C modules only) that parents QEMU "
        "and records its exit status, "
        "so that any process can tell a guest that powered off from a QEMU that died, and follows "
        "QEMU's QMP events to keep the run state. USS is the memory it alone uses; RSS counts shared "
        "library pages again for each keeper."
    )
    table.note(
        "This process reaps the keepers it started on vmctl's one event-loop thread (pidfds), not a "
        "thread per VM; the VMs themselves do not depend on this process."
    )
    loop.close()
    report.show(table)


# -- 3. overlay creation -------------------------------------------------------------------------
def bench_overlays(report: Report, guest: TestGuest, work: Path, quick: bool) -> None:
    hv = vmctl.connect("qemu", state_dir=work / "overlays", accel="tcg")
    bases = work / "bases"
    bases.mkdir()
    reps = 3 if quick else 10
    table = report.table(
        "Overlay creation time against base image size (sparse bases)",
        ["base", "format", "base on disk (KiB)", "vmctl create median (ms)", "vmctl p95", "raw qemu-img median (ms)",
         "ratio", "overlay (KiB)"],
    )  # fmt: skip
    for label, size in (("64 MiB", 64 << 20), ("512 MiB", 512 << 20), ("1 GiB", 1 << 30), ("4 GiB", 4 << 30),
                        ("8 GiB", 8 << 30)):  # fmt: skip
        for fmt in ("qcow2", "raw"):
            base = bases / f"base-{size}.{fmt}"
            if fmt == "qcow2":
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(size)], check=True, timeout=60
                )
            else:
                with open(base, "wb") as f:
                    f.truncate(size)
            ours: list[float] = []
            theirs: list[float] = []
            overlay_size = 0
            for i in range(reps):
                name = f"ov-{size >> 20}-{fmt}-{i}"
                out = work / f"{name}.qcow2"

                def raw_create(out: Path = out, base: Path = base, fmt: str = fmt) -> None:
                    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(out)]
                    subprocess.run(argv, check=True, timeout=60)

                made: list[vmctl.Machine] = []
                vmctl_create = functools.partial(create_into, made, hv, vmctl.MachineSpec(name=name, disk=base))
                steps = [("vmctl", vmctl_create), ("raw", raw_create)]
                for who, action in steps[:: 1 if i % 2 == 0 else -1]:
                    (ours if who == "vmctl" else theirs).append(timed(action))
                overlay_size = (made[0].dir / "disk.qcow2").stat().st_size
                made[0].destroy()
                out.unlink()
            table.add(
                label,
                fmt,
                f"{allocated(base) / 1024:.0f}",
                ms(med(ours)),
                ms(p95(ours)),
                ms(med(theirs)),
                ratio(med(ours), med(theirs)),
                f"{overlay_size / 1024:.0f}",
            )
            base.unlink()
    table.note(
        "vmctl create = `qemu-img info` (format detection) + `qemu-img create` + the machine record, "
        "assembled in a private directory and renamed into place; raw = `qemu-img create` alone."
    )
    report.show(table)


# -- 4. checkpoints ------------------------------------------------------------------------------
def bench_checkpoints(report: Report, vm: vmctl.Machine, quick: bool) -> None:
    overlay = vm.dir / "disk.qcow2"
    count, keep = 20, 2
    rows: list[dict[str, float]] = [{} for _ in range(count)]
    start_alloc = allocated(overlay)
    prune_times: list[float] = []
    for i in range(count):
        rows[i]["snap"] = timed(functools.partial(vm.snapshot, f"p{i}"))
        if i >= keep:
            rows[i]["prune"] = timed(functools.partial(vm.delete_snapshot, f"p{i - keep}"))
            prune_times.append(rows[i]["prune"])
        rows[i]["alloc"] = allocated(overlay)
    reverts = [timed(lambda: vm.revert(f"p{count - 1}")) for _ in range(3 if quick else 5)]
    reverts_older = [timed(lambda: vm.revert(f"p{count - keep}")) for _ in range(3 if quick else 5)]
    for i in range(count - keep, count):
        vm.delete_snapshot(f"p{i}")
    pruned_end = allocated(overlay)

    kept_times: list[float] = []
    for i in range(count):
        rows[i]["snap_all"] = timed(functools.partial(vm.snapshot, f"k{i}"))
        kept_times.append(rows[i]["snap_all"])
        rows[i]["alloc_all"] = allocated(overlay)
    reverts_first = [timed(lambda: vm.revert("k0")) for _ in range(3)]
    cleanup = timed(lambda: [vm.delete_snapshot(f"k{i}") for i in range(count)])

    table = report.table(
        f"Checkpoints: {count} live snapshots in a row",
        ["#", f"snapshot, keep last {keep} (ms)", "prune oldest (ms)", "overlay allocated (MiB)",
         "snapshot, keep all (ms)", "overlay allocated, keep all (MiB)"],
    )  # fmt: skip
    for i, r in enumerate(rows):
        table.add(
            i + 1,
            ms(r["snap"]),
            ms(r["prune"]) if "prune" in r else "-",
            mib(r["alloc"]),
            ms(r["snap_all"]),
            mib(r["alloc_all"]),
        )
    pruned = [r["snap"] for r in rows]
    table.note(
        f"snapshot median {ms(med(pruned))} ms (p95 {ms(p95(pruned))}) with pruning, "
        f"{ms(med(kept_times))} ms (p95 {ms(p95(kept_times))}) keeping all; prune median {ms(med(prune_times))} ms."
    )
    table.note(
        f"revert to the newest: median {ms(med(reverts))} ms; to the oldest kept: {ms(med(reverts_older))} ms; "
        f"to the first of {count} kept: {ms(med(reverts_first))} ms. Deleting {count} snapshots: {cleanup:.1f} s."
    )
    table.note(
        f"Overlay allocated before: {mib(start_alloc)} MiB; after {count} pruned checkpoints and deleting the "
        f"last {keep}: {mib(pruned_end)} MiB. With pruning the overlay stops growing once {keep} snapshots' "
        "worth of clusters is allocated (freed clusters are reused); the file never shrinks."
    )
    report.show(table)


# -- main ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="vmctl-bench-qemu-"))
    try:
        yield work
    finally:
        for state in ("state", "scale", "overlays"):
            if (work / state).exists():
                hv = vmctl.connect("qemu", state_dir=work / state, accel="tcg")
                for vm in hv.machines():
                    with contextlib.suppress(vmctl.VmctlError):
                        vm.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    report = Report("QEMU backend", args)
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            report.skip(f"{tool} is not installed")
    guest = ensure_test_guest()
    report.note(
        "Run with `.venv/bin/python benchmarks/bench_qemu.py`"
        + (" --quick (fewer repetitions)." if args.quick else ".")
    )
    with workspace() as work:
        (work / "logs").mkdir()
        vm = bench_latency(report, guest, work, args.quick)
        bench_checkpoints(report, vm, args.quick)
        vm.destroy()
        bench_scale(report, guest, work, args.quick)
        bench_overlays(report, guest, work, args.quick)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
