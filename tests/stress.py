"""A seeded stress driver: many callers send random verbs at a few shared machines.

Callers are separate processes (each opens the machines itself, through the harness's
``connect_code``) or threads sharing one connection and one handle per machine. Each caller
draws its verbs from its own ``random.Random(seed + index)`` and records every answer: the verb,
the machine, the class of what it raised (``ok`` for a success) and when it began and ended.
:func:`wrong_answers` then names every answer that breaks the rule of issue 21: a verb succeeds or
raises a typed refusal, never a ``BackendError`` for a lost race nor a foreign exception.

Used by ``tests/test_stress.py`` (a short setting) and ``benchmarks/bench_stress.py`` (a long one).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmctl
from vmctl.testing import Harness

__all__ = [
    "VERBS",
    "Answer",
    "Result",
    "lacking_verbs",
    "run_processes",
    "run_threads",
    "world_disagreements",
    "wrong_answers",
]

VERBS = (
    "start",
    "pause",
    "resume",
    "suspend",
    "stop",
    "poweroff",
    "restart",
    "snapshot",
    "revert",
    "delete_snapshot",
    "usage",
    "state",
    "snapshots",
)
#: few names, so that callers collide on them
SNAPSHOT_NAMES = ("s1", "s2")
#: the refusals a caller may get whatever the others do (MachineNotFound: none of the callers
#: destroys a machine, but it is the right answer should anyone else do it)
TYPED = frozenset({"InvalidState", "SnapshotNotFound", "SnapshotExists", "OperationTimeout", "MachineNotFound"})
#: seconds a graceful stop waits for the guest before it forces a power-off (kept short: the
#: guest may not have booted, and then it ignores the button)
STOP_GRACE = 2.0
#: the forced power-off that ends a graceful stop or restart has its own 30 s (vmctl.interface)
FORCED = 30.0
#: what a verb may take beyond its timeout: the wait for the machine's section, scheduling
SLACK = 10.0
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Answer:
    caller: int
    machine: str
    verb: str
    outcome: str  # "ok" or the class name of what the verb raised
    message: str
    began: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.began


@dataclass
class Result:
    answers: list[Answer] = field(default_factory=list)
    #: callers that did not finish by the deadline (a hung verb) or died
    hung: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self) -> Counter[str]:
        return Counter(a.outcome for a in self.answers)


def verb_bound(verb: str, timeout: float) -> float:
    """The longest a verb called with ``timeout`` may take."""
    if verb == "stop":
        return STOP_GRACE + FORCED + timeout + SLACK
    if verb == "restart":
        return timeout + FORCED + SLACK
    return timeout + SLACK


def call(vm: vmctl.Machine, verb: str, rng: random.Random, timeout: float) -> tuple[str, str]:
    """Send one verb; return (outcome, message)."""
    snap = rng.choice(SNAPSHOT_NAMES)
    try:
        if verb == "state":
            vm.state  # noqa: B018 - the read is the verb
        elif verb == "usage":
            vm.usage()
        elif verb == "snapshots":
            vm.snapshots()
        elif verb == "stop":
            vm.stop(timeout=STOP_GRACE)
        elif verb == "restart":
            vm.restart(hard=True, timeout=timeout)
        elif verb == "snapshot":
            vm.snapshot(snap, timeout=timeout)
        elif verb in ("revert", "delete_snapshot"):
            getattr(vm, verb)(snap, timeout=timeout)
        else:
            getattr(vm, verb)(timeout=timeout)
    except BaseException as exc:  # the point: classify whatever comes out
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = ""
        if not isinstance(exc, vmctl.VmctlError):  # a foreign exception: say where it came from
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" (at {Path(frame.filename).name}:{frame.lineno})"
        return type(exc).__name__, str(exc)[:300] + where
    return "ok", ""


def caller_loop(
    vms: dict[str, vmctl.Machine],
    index: int,
    seed: int,
    seconds: float,
    timeout: float,
    emit: Any,
    verbs: Iterable[str] = VERBS,
) -> None:
    rng = random.Random(seed * 1000 + index)
    names = sorted(vms)
    mix = list(verbs)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = rng.choice(names)
        verb = rng.choice(mix)
        began = time.monotonic()
        outcome, message = call(vms[name], verb, rng, timeout)
        emit(Answer(index, name, verb, outcome, message, began, time.monotonic()))


_WORKER = """
import json, sys
from tests.stress import Answer, caller_loop
cfg = json.loads(sys.argv[1])
vms = {{n: hv.machine(n) for n in cfg["machines"]}}
def emit(a):
    print(json.dumps(a.__dict__), flush=True)
caller_loop(vms, cfg["index"], cfg["seed"], cfg["seconds"], cfg["timeout"], emit, cfg["verbs"])
"""


def run_processes(
    harness: Harness,
    machines: list[str],
    callers: int,
    seconds: float,
    seed: int,
    timeout: float = 30,
    verbs: Iterable[str] = VERBS,
) -> Result:
    """``callers`` processes, each with its own connection, for ``seconds``."""
    result = Result()
    code = harness.connect_code() + _WORKER.format()
    procs = []
    started = time.monotonic()
    for index in range(callers):
        cfg = {
            "machines": machines,
            "index": index,
            "seed": seed,
            "seconds": seconds,
            "timeout": timeout,
            "verbs": list(verbs),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=_ROOT,
            )
        )
    # every caller's last verb began before ``seconds``; it may then run to its bound
    limit = started + seconds + max(verb_bound(v, timeout) for v in VERBS) + 30
    outputs: list[tuple[str, str]] = []
    for index, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=max(1.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            result.hung.append(f"caller {index} still running at the deadline")
        outputs.append((out, err))
        if proc.returncode not in (0, -9):
            result.hung.append(f"caller {index} exited {proc.returncode}: {err[-2000:]}")
    for out, _ in outputs:
        for line in out.splitlines():
            result.answers.append(Answer(**json.loads(line)))
    result.seconds = time.monotonic() - started
    return result


def run_threads(
    hv: vmctl.Hypervisor,
    machines: list[str],
    callers: int,
    seconds: float,
    seed: int,
    timeout: float = 30,
    verbs: Iterable[str] = VERBS,
) -> Result:
    """``callers`` threads sharing ``hv`` and one handle per machine, for ``seconds``."""
    result = Result()
    vms = {name: hv.machine(name) for name in machines}
    lock = threading.Lock()

    def emit(answer: Answer) -> None:
        with lock:
            result.answers.append(answer)

    started = time.monotonic()
    threads = [
        threading.Thread(target=caller_loop, args=(vms, i, seed, seconds, timeout, emit, verbs), daemon=True)
        for i in range(callers)
    ]
    for t in threads:
        t.start()
    limit = started + seconds + max(verb_bound(v, timeout) for v in VERBS) + 30
    for i, t in enumerate(threads):
        t.join(max(0.0, limit - time.monotonic()))
        if t.is_alive():
            result.hung.append(f"thread {i} still running at the deadline")
    result.seconds = time.monotonic() - started
    return result


def lacking_verbs(caps: vmctl.Capabilities, peer_lacks: Iterable[str] = ()) -> set[str]:
    """Verbs that may rightly answer Unsupported on a backend with ``caps``."""
    lacks: set[str] = set()
    if not caps.pause:
        lacks |= {"pause", "resume"}
    if not caps.suspend:
        lacks.add("suspend")
    if not caps.snapshots:
        lacks |= {"snapshot", "revert", "delete_snapshot", "snapshots"}
    if not caps.live_snapshots:
        lacks.add("snapshot")  # of a running or paused machine
    for flag in peer_lacks:
        lacks |= {"restart"} if flag == "graceful_restart" else {flag}
    return lacks


def wrong_answers(
    result: Result, lacks: set[str], timeout: float, expected: Mapping[str, frozenset[str]] | None = None
) -> list[Answer]:
    """Every answer that is neither a success nor a typed refusal, or that outlived its bound.

    ``expected``: further refusals the peer under test gives rightly, by verb (a vcsim guest has
    no VMware Tools, so its graceful stop is ``ToolsUnavailable``).
    """
    wrong = []
    for a in result.answers:
        allowed = (
            a.outcome == "ok"
            or a.outcome in TYPED
            or (a.outcome == "Unsupported" and a.verb in lacks)
            or a.outcome in (expected or {}).get(a.verb, ())
        )
        if not allowed or a.seconds > verb_bound(a.verb, timeout):
            wrong.append(a)
    return wrong


def world_disagreements(hv: vmctl.Hypervisor, name: str, has_process: bool) -> list[str]:
    """Where the machine's state and the world disagree: a RUNNING or PAUSED machine has a live
    process, the others none (only checked where the backend shows processes)."""
    import psutil

    try:
        vm = hv.machine(name)
        state = vm.state
    except vmctl.MachineNotFound:
        return [f"{name} was destroyed by someone else"]
    pid = vm.pid
    problems = []
    if state is vmctl.State.UNKNOWN:
        problems.append(f"{vm.name} is in an unknown state")
    if not has_process:
        return problems
    if state in (vmctl.State.RUNNING, vmctl.State.PAUSED):
        if pid is None or not psutil.pid_exists(pid):
            problems.append(f"{vm.name} is {state.value} but has no live process (pid {pid})")
    elif pid is not None and psutil.pid_exists(pid):
        problems.append(f"{vm.name} is {state.value} but process {pid} lives")
    return problems


def wrong_kinds(wrong: list[Answer]) -> list[dict[str, Any]]:
    """The wrong answers grouped by verb, outcome and the start of the message, most frequent first."""
    kinds: Counter[tuple[str, str, str]] = Counter((a.verb, a.outcome, a.message[:100]) for a in wrong)
    return [{"verb": v, "outcome": o, "message": m, "count": n} for (v, o, m), n in kinds.most_common()]


def summary(result: Result, wrong: list[Answer]) -> dict[str, Any]:
    return {
        "verbs": len(result.answers),
        "seconds": round(result.seconds, 1),
        "verbs_per_second": round(len(result.answers) / result.seconds, 1) if result.seconds else 0.0,
        "wrong": len(wrong),
        "hung": len(result.hung),
        "outcomes": dict(result.count()),
        "wrong_kinds": wrong_kinds(wrong),
    }
