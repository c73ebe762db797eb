"""The contract, part 2: what a running guest sees when it is paused, suspended, snapshotted and unplugged."""

from __future__ import annotations

import pytest

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness, wait_until
from vmctl.testing.contract._steps import MakeVm, boot, observe


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
    if harness.guest_view:
        probe.wait_counter_above(2, 15)
    snap = vm.snapshot("s1", description="before")
    # the image holds the counter of some moment during the call: no later than when it returned
    at_snapshot = probe.counter() if harness.guest_view else 0
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
