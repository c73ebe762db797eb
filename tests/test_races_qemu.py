"""QEMU races of issue 21, each provoked on purpose with a real QEMU really killed.

vmctl's callers queue on the machine's lock, so these races come from outside it: QEMU killed
(by an operator, the OOM killer, another tool) while a verb talks to its monitor. The verb must
answer as the state then says (InvalidState naming it), never with a BackendError or with the
AssertionError qemu.qmp raises when its peer vanishes mid-handshake.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import vmctl
from vmctl import State
from vmctl.testguest import ensure_test_guest

from .contract.harness import wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[vmctl.Machine]:
    guest = ensure_test_guest()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    machine = hv.create(
        vmctl.MachineSpec(
            name="race",
            disk=guest.disk,
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=guest.cmdline,
            memory_mib=128,
        )
    )
    try:
        yield machine
    finally:
        machine.destroy()


def _kill_first(vm: vmctl.Machine, method: str, pid: int) -> None:
    """Make the machine's ``method`` kill QEMU (a real SIGKILL) before it runs: the moment a
    caller outside vmctl's lock ends QEMU between the verb's state check and its command."""
    original = getattr(vm, method)

    def killing(*args: Any, **kwargs: Any) -> Any:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, "QEMU to die")
        return original(*args, **kwargs)

    setattr(vm, method, killing)


@pytest.mark.parametrize(
    "moment",
    [
        "_monitor",  # before the verb connects to the monitor
        "_wait_migration",  # after the migration began, while the verb polls it
    ],
)
def test_qemu_killed_under_suspend_is_invalid_state(vm: vmctl.Machine, moment: str) -> None:
    vm.start()
    pid = vm.pid
    assert pid is not None
    _kill_first(vm, moment, pid)
    with pytest.raises(vmctl.InvalidState) as caught:
        vm.suspend(timeout=60)
    assert caught.value.state is State.CRASHED
    assert "went away" in str(caught.value)
    vars(vm).pop(moment)
    assert vm.state is State.CRASHED and vm.pid is None
    assert not (vm.hypervisor.store.path(vm.name) / "state.bin.tmp").exists(), "a half-written state was kept"  # type: ignore[attr-defined]
    vm.start()  # and the machine is usable again
    assert vm.state is State.RUNNING
