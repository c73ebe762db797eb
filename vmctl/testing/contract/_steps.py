"""Steps the contract tests share: booting and measuring a guest."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness, wait_until

__all__ = ["MakeVm", "boot", "needs", "observe", "sha256"]

#: The ``make_vm`` fixture: ``make_vm(network=False, ignore_power_button=False)`` creates a machine.
MakeVm = Callable[..., vmctl.Machine]

#: ``@needs("multi_process")``: run only for harnesses whose named attributes are all true.
needs = pytest.mark.vmctl_needs


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
