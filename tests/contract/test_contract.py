"""The contract every backend passes: each verb, each transition, each invalid transition,
and what the guest itself sees. Parametrised over the harnesses in ``harness_*.py``."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import vmctl
from vmctl import State

from .harness import Harness, wait_until
from .race import ProcessCaller, ThreadCaller, race

MakeVm = Callable[..., vmctl.Machine]
ROOT = Path(__file__).resolve().parents[2]


def boot(harness: Harness, vm: vmctl.Machine) -> None:
    """Start ``vm`` from STOPPED/CRASHED and wait until its guest has booted anew."""
    probe = harness.probe(vm)
    if not harness.guest_view:
        vm.start(timeout=harness.boot_timeout)
        assert vm.state is State.RUNNING
        probe.wait_ready(harness.boot_timeout)
        return
    boots = probe.boots()
    vm.start(timeout=harness.boot_timeout)
    assert vm.state is State.RUNNING
    wait_until(lambda: probe.boots() > boots and probe.ready(), harness.boot_timeout, "the guest to boot")


def observe(seconds: float) -> None:
    """Let guest time pass for a measurement window (not a synchronisation)."""
    time.sleep(seconds)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- definition ---------------------------------------------------------------------------------
def test_backend_is_listed_and_usable(harness: Harness, hv: vmctl.Hypervisor) -> None:
    info = {b.name: b for b in vmctl.backends()}
    assert hv.name in info
    assert info[hv.name].usable, info[hv.name].reason


def test_create_defines_a_stopped_machine(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    assert vm.state is State.STOPPED
    assert vm.pid is None
    assert hv.machine(vm.name).state is State.STOPPED
    assert vm.name in [m.name for m in hv.machines()]
    assert vm.spec.name == vm.name
    with pytest.raises(vmctl.MachineExists):
        hv.create(harness.spec(vm.name))
    usage = vm.usage()
    assert usage.machine == vm.name and usage.cpu_seconds is None


def test_unknown_and_unsafe_names_are_refused(hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("no-such-machine-here")
    for bad in ["../etc", "a/b", "x;rm -rf", "", "é", "a" * 65, "-lead"]:
        with pytest.raises(vmctl.InvalidSpec):
            hv.machine(bad)
    vm = make_vm()
    for bad in ["../s", "s 1", "$(x)"]:
        with pytest.raises(vmctl.InvalidSpec):
            vm.snapshot(bad)


def test_spec_features_the_backend_lacks_are_refused_at_create(
    harness: Harness, hv: vmctl.Hypervisor, tmp_path: Path
) -> None:
    """Capabilities say which spec features a backend takes; create refuses the others with one
    Unsupported message naming the feature, and makes nothing."""
    caps = hv.capabilities
    base = harness.spec(f"sf{time.monotonic_ns() % 100000}")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    uses = {
        "kernel_boot": {"kernel": kernel},
        "shared_dirs": {"shared_dirs": {"job": tmp_path}},
        "port_forwards": {"network": vmctl.Network([vmctl.PortForward(2222, 22)])},
        "serial_log": {"serial_log": tmp_path / "console.log"},
        "overlay": {"overlay": True},
        "direct_disk": {"overlay": False},
    }
    before = {vm.name for vm in hv.machines()}
    for feature, change in uses.items():
        assert isinstance(getattr(caps, feature), bool)
        if getattr(caps, feature) or (feature in ("overlay", "direct_disk") and base.disk is None):
            continue
        values = {**base.to_dict(), **change}
        spec = vmctl.MachineSpec(**{k: v for k, v in values.items() if k != "network"}, network=values.get("network"))
        assert feature in vmctl.types.spec_features(spec)
        with pytest.raises(
            vmctl.Unsupported, match=re.escape(f"does not support create: {vmctl.types.SPEC_FEATURES[feature]}")
        ):
            hv.create(spec)
    assert {vm.name for vm in hv.machines()} == before


def test_invalid_transitions_from_stopped(hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(network=True)
    caps = hv.capabilities
    verbs = [vm.stop, vm.poweroff, vm.restart]
    verbs += [vm.pause, vm.resume] if caps.pause else []
    verbs += [vm.suspend] if caps.suspend else []
    for verb in verbs:
        with pytest.raises(vmctl.InvalidState) as err:
            verb()
        assert err.value.state is State.STOPPED
    with pytest.raises((vmctl.InvalidState, vmctl.Unsupported)):
        vm.set_network(False)
    assert vm.state is State.STOPPED


def test_unsupported_verbs_raise_unsupported(hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    caps = hv.capabilities
    vm = make_vm()
    calls = {
        "pause": (caps.pause, vm.pause),
        "suspend": (caps.suspend, vm.suspend),
        "snapshots": (caps.snapshots, vm.snapshots),
        "cpu_limit": (caps.cpu_limit, lambda: vm.set_cpu_limit(50)),
    }
    for flag, call in calls.values():
        if not flag:
            with pytest.raises(vmctl.Unsupported):
                call()
    if caps.snapshots:
        assert vm.snapshots() == []


def test_wait_for_has_a_deadline(make_vm: MakeVm) -> None:
    vm = make_vm()
    started = time.monotonic()
    with pytest.raises(vmctl.OperationTimeout):
        vm.wait_for(State.RUNNING, timeout=0.3)
    assert time.monotonic() - started < 5
    assert vm.wait_for([State.STOPPED, State.RUNNING], timeout=1) is State.STOPPED


# -- running ------------------------------------------------------------------------------------
def test_pause_freezes_the_guest_and_its_cpu(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    if not hv.capabilities.pause:
        with pytest.raises(vmctl.Unsupported):
            vm.pause()
        assert vm.state is State.RUNNING
        return
    probe = harness.probe(vm)
    with pytest.raises(vmctl.InvalidState):
        vm.start()
    with pytest.raises(vmctl.InvalidState):
        vm.resume()
    if harness.multi_process:
        assert vm.pid is not None
    running = vm.usage()
    for field in hv.capabilities.usage_fields:
        value = getattr(running, field)
        assert value is not None and value >= 0, field
    counter = probe.wait_counter_above(probe.counter(), 10) if harness.guest_view else 0

    vm.pause()
    assert vm.state is State.PAUSED
    with pytest.raises(vmctl.InvalidState) as err:
        vm.pause()
    assert err.value.state is State.PAUSED
    paused_counter = probe.counter() if harness.guest_view else 0
    paused_cpu = vm.usage().cpu_seconds
    observe(1.5)
    if harness.guest_view:
        assert probe.counter() == paused_counter
    if "cpu_seconds" in hv.capabilities.usage_fields:
        assert paused_cpu is not None and running.cpu_seconds is not None
        assert paused_cpu >= running.cpu_seconds
        still = vm.usage().cpu_seconds
        assert still is not None and still - paused_cpu < 0.3

    vm.resume()
    assert vm.state is State.RUNNING
    if harness.guest_view:
        probe.wait_counter_above(max(counter, paused_counter), 10)
    if "cpu_seconds" in hv.capabilities.usage_fields:
        observe(1.0)
        later = vm.usage().cpu_seconds
        assert later is not None and paused_cpu is not None and later > paused_cpu
    vm.poweroff()
    assert vm.state is State.STOPPED
    assert vm.pid is None


def test_suspend_and_start_keep_guest_state(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    if not hv.capabilities.suspend:
        with pytest.raises(vmctl.Unsupported):
            vm.suspend()
        assert vm.state is State.RUNNING
        return
    probe = harness.probe(vm)
    before = probe.wait_counter_above(2, 15) if harness.guest_view else 0
    boots = probe.boots() if harness.guest_view else 0
    vm.suspend()
    assert vm.state is State.SUSPENDED
    assert vm.pid is None
    for verb in (vm.pause, vm.resume, vm.restart, vm.suspend) if hv.capabilities.pause else (vm.restart, vm.suspend):
        with pytest.raises(vmctl.InvalidState):
            verb()
    vm.start(timeout=harness.boot_timeout)
    assert vm.state is State.RUNNING
    probe.wait_ready(harness.boot_timeout)
    if harness.guest_view:
        after = probe.wait_counter_above(before, 15)
        assert after > before
        assert probe.boots() == boots, "start after suspend must restore, not reboot"
    vm.suspend()
    vm.poweroff()  # discards the saved state
    assert vm.state is State.STOPPED
    boot(harness, vm)
    if harness.guest_view:
        assert probe.boots() == boots + 1


def test_snapshot_revert_restores_guest_memory(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    if not (hv.capabilities.snapshots and hv.capabilities.live_snapshots):
        with pytest.raises(vmctl.Unsupported):
            vm.snapshot("s1")
        assert vm.state is State.RUNNING
        return
    probe = harness.probe(vm)
    at_snapshot = probe.wait_counter_above(2, 15) if harness.guest_view else 0
    snap = vm.snapshot("s1", description="before")
    assert snap.name == "s1" and snap.has_memory
    assert vm.state is State.RUNNING
    with pytest.raises(vmctl.InvalidSpec):
        vm.snapshot("s1")
    later = probe.wait_counter_above(at_snapshot + 6, 30) if harness.guest_view else 0
    vm.revert("s1")
    assert vm.state is State.RUNNING
    if harness.guest_view:
        wait_until(lambda: probe.counter() < later - 2, 30, "the guest counter to go back after revert")
    with pytest.raises(vmctl.SnapshotNotFound):
        vm.revert("nope")

    vm.poweroff()
    cold = vm.snapshot("cold")
    assert not cold.has_memory
    names = [s.name for s in vm.snapshots()]
    assert names == ["s1", "cold"]
    vm.revert("s1")
    assert vm.state is State.RUNNING
    vm.revert("cold")
    assert vm.state is State.STOPPED
    vm.delete_snapshot("s1")
    assert [s.name for s in vm.snapshots()] == ["cold"]
    with pytest.raises(vmctl.SnapshotNotFound):
        vm.delete_snapshot("s1")


def test_graceful_stop_is_graceful(harness: Harness, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    probe = harness.probe(vm)
    presses = probe.power_button_presses() if harness.guest_view else 0
    assert vm.stop(timeout=harness.boot_timeout) is True
    assert vm.state is State.STOPPED
    if harness.guest_view:
        assert probe.power_button_presses() == presses + 1
    assert vm.pid is None


@pytest.mark.needs("can_ignore_power_button")
def test_stop_forces_off_a_guest_that_ignores_the_button(harness: Harness, make_vm: MakeVm) -> None:
    vm = make_vm(ignore_power_button=True)
    boot(harness, vm)
    started = time.monotonic()
    assert vm.stop(timeout=3) is False
    assert vm.state is State.STOPPED
    assert time.monotonic() - started < 3 + 30


def test_restart_hard_and_graceful(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    probe = harness.probe(vm)
    boots = probe.boots() if harness.guest_view else 0
    assert vm.restart(hard=True) is False
    if harness.guest_view:
        wait_until(lambda: probe.boots() == boots + 1, harness.boot_timeout, "the guest to boot again after reset")
        probe.wait_ready(harness.boot_timeout)
    assert vm.state is State.RUNNING
    if not hv.capabilities.graceful_restart or "graceful_restart" in harness.peer_lacks:
        with pytest.raises(vmctl.Unsupported):
            vm.restart(hard=False)
        return
    presses = probe.power_button_presses() if harness.guest_view else 0
    assert vm.restart(hard=False, timeout=harness.boot_timeout) is True
    if harness.guest_view:
        wait_until(lambda: probe.boots() == boots + 2, harness.boot_timeout, "the guest to boot again after reboot")
        assert probe.power_button_presses() == presses + 1
    assert vm.state is State.RUNNING


@pytest.mark.needs("can_crash", "can_ignore_power_button")
def test_a_machine_that_crashes_while_stopping_ends_stopped(harness: Harness, make_vm: MakeVm) -> None:
    """stop is graceful, then forced: a guest that crashes while asked to shut down can no longer
    comply, so stop powers the machine off at once (not at its deadline), ends STOPPED and
    reports a forced stop; it does not leave the caller with a CRASHED machine and an error."""
    vm = make_vm(ignore_power_button=True)
    boot(harness, vm)
    # Crash it once stop has asked the guest to shut down (some harnesses' guests do not even
    # see the button when they ignore it, so the request itself is the signal).
    asked = threading.Event()
    request_shutdown = vm._do_request_shutdown

    def request_then_tell() -> None:
        request_shutdown()
        asked.set()

    vm._do_request_shutdown = request_then_tell  # type: ignore[method-assign]
    outcome: list[object] = []

    def stop() -> None:
        try:
            outcome.append(vm.stop(timeout=600))
        except Exception as exc:
            outcome.append(exc)

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    assert asked.wait(harness.boot_timeout), "stop did not ask the guest to shut down"
    crashed_at = time.monotonic()
    harness.kill_hypervisor_process(vm)
    stopper.join(120)
    assert outcome == [False]
    assert time.monotonic() - crashed_at < 60
    assert vm.state is State.STOPPED
    assert vm.pid is None


@pytest.mark.needs("can_crash")
def test_crash_is_reported_and_recoverable(harness: Harness, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    harness.kill_hypervisor_process(vm)
    assert vm.wait_for(State.CRASHED, timeout=20) is State.CRASHED
    with pytest.raises(vmctl.InvalidState):
        vm.wait_for(State.RUNNING, timeout=1)
    boot(harness, vm)
    vm.poweroff()
    assert vm.state is State.STOPPED


def test_network_link_toggle(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    if not hv.capabilities.network_toggle:
        vm = make_vm(network=True)
        with pytest.raises(vmctl.Unsupported):
            vm.set_network(False)
        return
    plain = make_vm()
    boot(harness, plain)
    with pytest.raises(vmctl.InvalidSpec):
        plain.set_network(False)
    plain.poweroff()
    vm = make_vm(network=True)
    boot(harness, vm)
    probe = harness.probe(vm)
    if not harness.guest_view:
        vm.set_network(False)
        vm.set_network(True)
        assert vm.state is State.RUNNING
        return
    wait_until(lambda: probe.link_up() is True, 15, "link up at boot")
    vm.set_network(False)
    wait_until(lambda: probe.link_up() is False, 15, "the guest to see its link down")
    vm.set_network(True)
    wait_until(lambda: probe.link_up() is True, 15, "the guest to see its link up again")


def test_destroy_leaves_nothing_behind(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    base = vm.spec.disk
    base_hash = sha256(base) if base else None
    boot(harness, vm)
    if hv.capabilities.snapshots and hv.capabilities.live_snapshots:
        vm.snapshot("keep")
    vm.destroy()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine(vm.name)
    assert vm.name not in [m.name for m in hv.machines()]
    assert harness.leftovers(vm.name) == []
    if base is not None:
        assert base.exists() and sha256(base) == base_hash, "the base image must not change"


@pytest.mark.needs("multi_process")
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "running" and lines[1] == str(pid) and lines[2] == expected.value
    assert vm.state is expected
    vm.poweroff()


@pytest.mark.needs("multi_process")
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
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)
    ]
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
        callers = [ProcessCaller(harness, vm.name, ROOT) for _ in range(2)]
    else:
        callers = [ThreadCaller(hv, vm.name) for _ in range(2)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside verbs of microseconds, as processes would
    overlapped = 0
    try:
        for round_ in range(harness.race_rounds):
            verb, target = cycle[round_ % len(cycle)]
            answers = race(callers, verb)
            texts = sorted(a[0] for a in answers)
            assert texts == ["InvalidState:" + target.value, "ok"], f"round {round_} ({verb}): {texts}"
            assert vm.state is target, f"round {round_} ({verb})"
            (_, began_a, ended_a), (_, began_b, ended_b) = answers
            overlapped += began_a < ended_b and began_b < ended_a
    finally:
        sys.setswitchinterval(switch_interval)
        for caller in callers:
            caller.close()
        if vm.state in (State.RUNNING, State.PAUSED):
            vm.poweroff()
    # proof that the race was run: the two calls were in flight together in many rounds
    print(f"race on {harness.id}: {harness.race_rounds} rounds, {overlapped} overlapped, one winner in each")
    assert overlapped >= harness.race_rounds // 5, f"the calls overlapped in only {overlapped} rounds"
