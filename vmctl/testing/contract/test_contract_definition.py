"""The contract, part 1: defining, naming and destroying machines, and the verbs a stopped machine refuses."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness
from vmctl.testing.contract._steps import MakeVm, boot, sha256


def test_backend_is_listed_and_usable(harness: Harness, hv: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in harness.tool_environment().items():
        monkeypatch.setenv(variable, value)
    info = {b.name: b for b in vmctl.backends()}
    assert hv.name in info
    assert info[hv.name].usable, info[hv.name].reason


def test_create_defines_a_stopped_machine(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    assert vm.state is State.STOPPED
    assert vm.pid is None
    assert hv.machine(vm.name).state is State.STOPPED
    assert vm.managed is not harness.adopted
    assert vm.name in [m.name for m in hv.machines(all=True)]
    assert (vm.name in [m.name for m in hv.machines()]) is vm.managed, "machines() lists vmctl's own only"
    assert hv.machine(vm.name).managed is vm.managed
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


def test_invalid_transitions_from_stopped(hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm(network=True)
    caps = hv.capabilities
    verbs: list[Callable[[], object]] = [vm.stop, vm.poweroff, vm.restart]
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
    calls: dict[str, tuple[bool, Callable[[], object]]] = {
        "pause": (caps.pause, vm.pause),
        "suspend": (caps.suspend, vm.suspend),
        "snapshots": (caps.snapshots, vm.snapshots),
        "cpu_limit": (caps.cpu_limit, lambda: vm.set_cpu_limit(50)),
        "disk_usage": (caps.disk_usage, vm.disk_usage),
    }
    for flag, call in calls.values():
        if not flag:
            with pytest.raises(vmctl.Unsupported):
                call()
    if caps.snapshots:
        assert vm.snapshots() == []


def test_disk_usage_names_the_machine_and_what_it_measured(hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    if not hv.capabilities.disk_usage:
        pytest.skip("the backend cannot report its files' disk use")
    vm = make_vm()
    used = vm.disk_usage()
    assert isinstance(used, vmctl.DiskUsage) and used.machine == vm.name
    assert isinstance(used.bytes, int) and used.bytes >= 0
    assert all(isinstance(p, str) and p for p in used.paths)
    if vm.spec.disk is not None:
        assert str(vm.spec.disk) not in used.paths, "the spec's disk image is the caller's, never counted"


def test_wait_for_has_a_deadline(make_vm: MakeVm) -> None:
    vm = make_vm()
    started = time.monotonic()
    with pytest.raises(vmctl.OperationTimeout):
        vm.wait_for(State.RUNNING, timeout=0.3)
    assert time.monotonic() - started < 5
    assert vm.wait_for([State.STOPPED, State.RUNNING], timeout=1) is State.STOPPED


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
    assert vm.name not in [m.name for m in hv.machines(all=True)]
    assert harness.leftovers(vm.name) == []
    if base is not None:
        assert base.exists() and sha256(base) == base_hash, "the base image must not change"


def test_spec_features_the_backend_lacks_are_refused_at_create(
    harness: Harness, hv: vmctl.Hypervisor, tmp_path: Path
) -> None:
    """Capabilities say which spec features a backend takes; create refuses the others with one
    Unsupported message naming the feature, and makes nothing."""
    caps = hv.capabilities
    base = harness.spec(f"sf{time.monotonic_ns() % 100000}")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    uses: dict[str, dict[str, Any]] = {
        "kernel_boot": {"kernel": kernel},
        "shared_dirs": {"shared_dirs": {"job": tmp_path}},
        "port_forwards": {"network": vmctl.Network([vmctl.PortForward(2222, 22)])},
        "serial_log": {"serial_log": tmp_path / "console.log"},
        "overlay": {"overlay": True},
        "direct_disk": {"overlay": False},
        "cdrom": {"cdrom": kernel.with_name("context.iso")},
        "extra_disks": {"extra_disks": [kernel.with_name("cache.img")]},
        "floppy": {"floppy": kernel.with_name("floppy.img")},
    }
    for name in ("context.iso", "cache.img", "floppy.img"):
        kernel.with_name(name).write_bytes(b"\0" * 2048)
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
    # only this name: on a shared host (qemu:///system) other tests create machines meanwhile
    assert base.name not in {vm.name for vm in hv.machines()} - before
