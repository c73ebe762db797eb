"""``set_cpu_limit`` on real QEMU (TCG): a guest spinning its CPU gets about the share it is given.

The guest's job (run.sh in its share) spins forever; the CPU time QEMU uses over a bounded window
is measured before and after the limit, with generous tolerance (the machine is shared). On a
host where QEMU's cgroup is not delegated with the ``cpu`` controller (cgroup v1, or v2 without
delegation, as on the CI machines) the limit is duty cycling (see ``vmctl_qemu._throttle``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.testguest import ensure_test_guest

SPIN = "while :; do :; done\n"
WINDOW = 1.5
"""Seconds of wall time over which QEMU's CPU time is measured."""


@pytest.fixture
def spinning(tmp_path: Path) -> Iterator[vmctl.Machine]:
    guest = ensure_test_guest()
    share = tmp_path / "share"
    share.mkdir()
    (share / "run.sh").write_text(SPIN)
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(
        vmctl.MachineSpec(
            name="spin",
            disk=guest.disk,
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=f"{guest.cmdline} vmctl.share=shared",
            memory_mib=128,
            shared_dirs={"shared": share},
        )
    )
    try:
        yield vm
    finally:
        vm.destroy()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def cpu_share(proc: psutil.Process) -> float:
    """QEMU's CPU seconds per wall second over :data:`WINDOW` (a measurement, not a wait)."""
    before, start = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(WINDOW)
    return (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - start)


def throttlers() -> list[psutil.Process]:
    """The duty-cycling processes this test process started (its children)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(part.endswith("_throttle.py") for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_spinning_guest_gets_about_its_limit(spinning: vmctl.Machine) -> None:
    vm = spinning
    assert vm.capabilities.cpu_limit
    vm.start()
    log = Path(vm.serial_log)  # type: ignore[attr-defined]
    wait_for(lambda: "VMCTL-GUEST RUN shared started" in log.read_text(errors="replace"), 60, "the guest to spin")
    assert vm.pid is not None
    qemu = psutil.Process(vm.pid)
    free = cpu_share(qemu)
    vm.set_cpu_limit(25)
    limited = cpu_share(qemu)
    assert limited <= 0.25 + 0.15, (limited, free)
    assert limited <= 0.6 * free, f"the limit is not applied: {limited:.2f} CPU limited, {free:.2f} free"
    assert vm.state is vmctl.State.RUNNING, "the guest's runstate is untouched"

    # Lifted: no throttling process is left and QEMU is not left stopped.
    vm.set_cpu_limit(100)
    assert throttlers() == []
    assert qemu.status() != psutil.STATUS_STOPPED


def test_a_limit_set_while_stopped_applies_at_every_start_and_nothing_outlives_the_vm(tmp_path: Path) -> None:
    from .qemu_machines import guest_machine

    with guest_machine(tmp_path, "limited") as vm:
        vm.set_cpu_limit(10)
        assert throttlers() == []
        vm.start()
        how = json.loads((vm.dir / "throttle.json").read_text())  # type: ignore[attr-defined]
        if "cgroup" in how:  # a host that delegates cgroup v2's cpu controller
            assert (Path(how["cgroup"]) / "cpu.max").read_text().split() == ["10000", "100000"]
        else:
            assert len(throttlers()) == 1, "set_cpu_limit and start return with the cycling in force"
            # a save to disk (at full speed) and a restore: the limit is in force again
            vm.suspend()
            vm.start()
            wait_for(lambda: len(throttlers()) == 1, 10, "the earlier cycler to end with its QEMU")
    wait_for(lambda: throttlers() == [], 10, "the duty cycling to end with the VM")
