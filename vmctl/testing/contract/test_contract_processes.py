"""The contract, part 4: other processes driving the same machines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness
from vmctl.testing.contract._race import ProcessCaller, ThreadCaller, race
from vmctl.testing.contract._steps import MakeVm, boot, needs

#: how long the race goes on past its rounds while too few of them overlapped
RACE_EXTRA_SECONDS = 90.0


@needs("multi_process")
def test_another_process_controls_the_machine(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    verb, expected = ("pause", State.PAUSED) if hv.capabilities.pause else ("suspend", State.SUSPENDED)
    pid = vm.pid
    code = harness.connect_code() + textwrap.dedent(
        f"""
        vm = hv.machine({vm.name!r})
        print(vm.state.value, vm.pid, flush=True)
        vm.{verb}()
        print(vm.state.value, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "running" and lines[1] == str(pid) and lines[2] == expected.value
    assert vm.state is expected
    vm.poweroff()


@needs("multi_process")
def test_concurrent_creates_of_one_name_make_one_machine(harness: Harness, hv: vmctl.Hypervisor) -> None:
    name = f"race{time.monotonic_ns() % 100000}"
    code = harness.connect_code() + textwrap.dedent(
        f"""
        import sys, vmctl
        spec = {harness.spec_code(name)}
        try:
            hv.create(spec)
            print("created")
        except vmctl.MachineExists:
            print("exists")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        results = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    finally:
        for p in procs:
            p.kill()
    try:
        assert results == ["created", "exists", "exists"]
        assert hv.machine(name).state is State.STOPPED
    finally:
        hv.machine(name).destroy()


def test_two_callers_racing_on_one_machine_get_one_success(
    harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm
) -> None:
    """Two processes (or, where machines live in one process, two threads) send the same verb
    to one machine at the same moment, round after round: one succeeds, the other is refused
    with InvalidState naming the state the winner left, and nothing else is ever answered."""
    vm = make_vm()
    if hv.capabilities.pause:
        cycle = [
            ("start", State.RUNNING),
            ("pause", State.PAUSED),
            ("resume", State.RUNNING),
            ("poweroff", State.STOPPED),
        ]
    else:
        cycle = [("start", State.RUNNING), ("poweroff", State.STOPPED)]
    callers: list[ProcessCaller] | list[ThreadCaller]
    if harness.multi_process:
        callers = [ProcessCaller(harness, vm.name) for _ in range(2)]
    else:
        callers = [ThreadCaller(hv, vm.name) for _ in range(2)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside verbs of microseconds, as processes would
    needed = harness.race_rounds // 5
    overlapped = rounds = 0
    more_until = time.monotonic() + RACE_EXTRA_SECONDS
    try:
        # at least race_rounds rounds; on a busy host, where a caller may be descheduled for a
        # whole round (or, for threads, run its whole verb inside one GIL slice), more until
        # enough of them really overlapped or the time allowed for more is up
        while rounds < harness.race_rounds or (overlapped < needed and time.monotonic() < more_until):
            verb, target = cycle[rounds % len(cycle)]
            answers = race(callers, verb)
            texts = sorted(a[0] for a in answers)
            assert texts == ["InvalidState:" + target.value, "ok"], f"round {rounds} ({verb}): {texts}"
            assert vm.state is target, f"round {rounds} ({verb})"
            (_, began_a, ended_a), (_, began_b, ended_b) = answers
            overlapped += began_a < ended_b and began_b < ended_a
            rounds += 1
    finally:
        sys.setswitchinterval(switch_interval)
        for caller in callers:
            caller.close()
        if vm.state in (State.RUNNING, State.PAUSED):
            vm.poweroff()
    # proof that the race was run: the two calls were in flight together in many rounds
    print(f"race on {harness.id}: {rounds} rounds, {overlapped} overlapped, one winner in each")
    assert overlapped >= needed, f"the calls overlapped in only {overlapped} of {rounds} rounds"
