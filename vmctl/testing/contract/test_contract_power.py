"""The contract, part 3: stopping, restarting and crashing, as the guest sees them."""

from __future__ import annotations

import threading
import time

import pytest

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness, wait_until
from vmctl.testing.contract._steps import MakeVm, boot, needs


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


@needs("can_ignore_power_button")
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


@needs("can_crash")
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


@needs("can_crash", "can_ignore_power_button")
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
