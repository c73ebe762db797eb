"""CLI-driven backends (VirtualBox through VBoxManage, VMware through vmrun) against their tool.

    .venv/bin/python benchmarks/bench_cli_backends.py [--quick] [--json PATH]

VirtualBox and VMware cannot be installed here, so both tools are the project's SIMULATORS
(``tests/simulators/vboxmanage_sim.py``, ``tests/simulators/vmrun_sim.py``), set up as the contract
harnesses set them up (``tests/contract/harness_virtualbox.py``, ``harness_vmware.py``) but without
injected faults. Per backend, two simulated machines are created through vmctl: one is driven
through vmctl, the other by running the simulated tool directly with the argv vmctl's hook sends
(the "raw tool" path: one process per call, no state checks, no waiting for the new state).
Each round runs state, pause, resume, snapshot, suspend and start (a restore) on both, in that
order, one verb on one machine and then on the other, alternating which goes first. The figures
are vmctl's overhead over the tool, not VirtualBox's or VMware's own latency.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # for tests.contract's simulator helpers

from benchlib import Report, Table, ms, p95, parse_args, ratio, timed  # noqa: E402
from benchlib import median as med  # noqa: E402

import vmctl  # noqa: E402

VERBS = ("state", "pause", "resume", "snapshot", "suspend", "start")
TOOL_ENV = dict(os.environ, LANG="C", LC_ALL="C")


def raw(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run the (simulated) tool once, as a script calling it directly would."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=TOOL_ENV, check=False)
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"{argv}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class Samples:
    def __init__(self) -> None:
        self.data: dict[str, list[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        self.data.setdefault(key, []).append(seconds)

    def __getitem__(self, key: str) -> list[float]:
        return self.data.get(key, [])


def interleave(vm: vmctl.Machine, raw_verbs: dict[str, Callable[[int], Any]], rounds: int) -> Samples:
    """Run every verb ``rounds`` times on ``vm`` and through ``raw_verbs``, alternating the order."""
    ours: dict[str, Callable[[int], Any]] = {
        "state": lambda i: vm.state,
        "pause": lambda i: vm.pause(),
        "resume": lambda i: vm.resume(),
        "snapshot": lambda i: vm.snapshot(f"s{i}"),
        "suspend": lambda i: vm.suspend(),
        "start": lambda i: vm.start(),
    }
    s = Samples()
    for i in range(rounds):
        for verb in VERBS:
            steps = [("vmctl", ours[verb]), ("raw", raw_verbs[verb])]
            for who, action in steps[:: 1 if (i + VERBS.index(verb)) % 2 == 0 else -1]:
                s.add(f"{verb}/{who}", timed(functools.partial(action, i)))
    assert vm.state is vmctl.State.RUNNING, vm.state
    return s


def fill(table: Table, s: Samples) -> None:
    for verb in VERBS:
        ours, theirs = s[f"{verb}/vmctl"], s[f"{verb}/raw"]
        table.add(
            verb,
            len(ours),
            ms(med(ours)),
            ms(p95(ours)),
            ms(med(theirs)),
            ms(p95(theirs)),
            ratio(med(ours), med(theirs)),
        )


COLUMNS = ["verb", "n", "vmctl median", "vmctl p95", "raw tool median", "raw tool p95", "ratio"]


# -- VirtualBox ----------------------------------------------------------------------------------
def bench_virtualbox(report: Report, work: Path, rounds: int) -> None:
    from tests.contract.harness_virtualbox import SIMULATOR, load_simulator, write_wrapper

    sim = load_simulator()
    home = work / "vboxsim-home"
    vboxmanage = str(write_wrapper(work / "bin-vbox" / "VBoxManage", home))
    disk = work / "base.vdi"
    disk.write_bytes(b"<<vmctl bench base image>>" + bytes(4096))
    hv = vmctl.connect("virtualbox", transport="vboxmanage", base_folder=str(work / "vbox-vms"), vboxmanage=vboxmanage)
    made: list[vmctl.Machine] = []
    try:
        for name in ("bench-vmctl", "bench-raw"):
            made.append(hv.create(vmctl.MachineSpec(name=name, disk=disk, memory_mib=256)))
        vm, other = made
        vm.start()
        other.start()
        name = other.name

        def vbox(*args: str, ok: tuple[int, ...] = (0,)) -> str:
            return raw([vboxmanage, *args], ok)

        raw_verbs: dict[str, Callable[[int], Any]] = {
            "state": lambda i: vbox("showvminfo", name, "--machinereadable"),
            "pause": lambda i: vbox("controlvm", name, "pause"),
            "resume": lambda i: vbox("controlvm", name, "resume"),
            "snapshot": lambda i: vbox("snapshot", name, "take", f"s{i}"),
            "suspend": lambda i: vbox("controlvm", name, "savestate"),
            "start": lambda i: vbox("startvm", name, "--type", "headless"),
        }
        s = interleave(vm, raw_verbs, rounds)
        assert other.state is vmctl.State.RUNNING
    finally:
        for machine in made:
            with contextlib.suppress(vmctl.VmctlError):
                machine.destroy()
        for pid in sim.vm_processes(home):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    table = report.table("VirtualBox backend against the VBoxManage SIMULATOR (interleaved, ms)", COLUMNS)
    fill(table, s)
    table.note(
        f"The tool is `{SIMULATOR.relative_to(ROOT)}`, a Python simulator of VBoxManage 7, not VirtualBox: "
        "these figures measure vmctl's overhead over the tool (each call starts a Python process, "
        "about as long as a real VBoxManage call's start-up), not VirtualBox's own latency."
    )
    table.note(
        "raw tool = one VBoxManage call with vmctl's argv (showvminfo --machinereadable; controlvm "
        "pause|resume|savestate; snapshot take; startvm --type headless). vmctl also reads the machine "
        "before the verb (state check) and polls showvminfo until the new state is reported."
    )
    report.show(table)


# -- VMware (vmrun) ------------------------------------------------------------------------------
def bench_vmware(report: Report, work: Path, rounds: int) -> None:
    from tests.contract.harness_vmware import SIMULATOR, fake_vmdk, load_simulator, make_vmrun, vmx_processes

    sim = load_simulator()
    home = work / "vmrunsim"
    vmrun = make_vmrun(work / "bin-vmrun", home)
    vm_dir = work / "vmware-vms"
    disk = fake_vmdk(work / "base.vmdk")
    hv = vmctl.connect("vmware", product="ws", vmrun=vmrun, vm_dir=vm_dir)
    made: list[vmctl.Machine] = []
    try:
        for name in ("bench-vmctl", "bench-raw"):
            sim.set_profile(home, name)
            made.append(hv.create(vmctl.MachineSpec(name=name, disk=disk, memory_mib=256)))
        vm, other = made
        vm.start()
        other.start()
        vmx = str(vm_dir / other.name / f"{other.name}.vmx")

        def run(*args: str) -> str:
            return raw([str(vmrun), "-T", "ws", *args])

        raw_verbs: dict[str, Callable[[int], Any]] = {
            "state": lambda i: run("list"),
            "pause": lambda i: run("pause", vmx),
            "resume": lambda i: run("unpause", vmx),
            "snapshot": lambda i: run("snapshot", vmx, f"s{i}"),
            "suspend": lambda i: run("suspend", vmx, "hard"),
            "start": lambda i: run("start", vmx, "nogui"),
        }
        s = interleave(vm, raw_verbs, rounds)
        # the raw path bypassed vmctl's record of "paused", so ask the tool, not vmctl
        assert vmx in run("list")
    finally:
        for machine in made:
            with contextlib.suppress(vmctl.VmctlError):
                machine.destroy()
        for proc in vmx_processes(str(vm_dir)):
            with contextlib.suppress(Exception):
                proc.kill()
        hv.close()
    table = report.table("VMware backend (Workstation) against the vmrun SIMULATOR (interleaved, ms)", COLUMNS)
    fill(table, s)
    table.note(
        f"The tool is `{SIMULATOR.relative_to(ROOT)}`, a Python simulator of vmrun (VIX 1.17), not VMware: "
        "these figures measure vmctl's overhead over the tool, not VMware's own latency."
    )
    table.note(
        "raw tool = one vmrun call with vmctl's argv (list; pause; unpause; snapshot; suspend hard; "
        "start nogui). vmctl's state is `vmrun list` plus its record (and the .vmx when not listed); "
        "its verbs check the state first, and snapshot lists the snapshots afterwards."
    )
    report.show(table)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="vmctl-bench-cli-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    report = Report("CLI backends (VirtualBox, VMware) against their tools' simulators", args)
    names = {p.name for p in vmctl.backends()} if hasattr(vmctl, "backends") else set()
    missing = [b for b in ("virtualbox", "vmware") if names and b not in names]
    if missing:
        report.skip(f"backends not installed: {', '.join(missing)}")
    rounds = 8 if args.quick else 25
    report.note(
        "VBoxManage and vmrun are SIMULATORS here (VirtualBox and VMware cannot be installed): the ratio "
        "is vmctl's overhead over calling the tool directly, not a measurement of VirtualBox or VMware."
    )
    report.note(f"{rounds} rounds per backend; one round = state, pause, resume, snapshot, suspend, start.")
    with workspace() as work:
        bench_virtualbox(report, work, rounds)
        bench_vmware(report, work, rounds)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
