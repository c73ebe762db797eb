"""QEMU races of issue 21, each provoked on purpose with a real QEMU really killed.

vmctl's callers queue on the machine's lock, so these races come from outside it: QEMU killed
(by an operator, the OOM killer, another tool) while a verb talks to its monitor. The verb must
answer as the state then says (InvalidState naming it), never with a BackendError or with the
AssertionError qemu.qmp raises when its peer vanishes mid-handshake.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import vmctl
from vmctl import State
from vmctl.testing import wait_until
from vmctl_qemu import _sequences

from .qemu_machines import guest_machine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[vmctl.Machine]:
    with guest_machine(tmp_path, "race") as machine:
        yield machine


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # reaped meanwhile (vmctl's event loop reaps its children at once)
        return True


def _kill_first(monkeypatch: pytest.MonkeyPatch, owner: object, function: str, pid: int) -> None:
    """Make ``owner.function`` kill QEMU (a real SIGKILL) before it runs: the moment a caller
    outside vmctl's lock ends QEMU between the verb's state check and its command."""
    original = getattr(owner, function)

    def killing(*args: Any, **kwargs: Any) -> Any:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _dead(pid), 10, "QEMU to die")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, function, killing)


@pytest.mark.parametrize(
    "moment",
    [
        "_monitor",  # before the verb connects to the monitor
        "_wait_migration",  # after the migration began, while the verb polls it
    ],
)
def test_qemu_killed_under_suspend_is_invalid_state(
    vm: vmctl.Machine, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm.start()
    pid = vm.pid
    assert pid is not None
    owner: object = vm if moment == "_monitor" else _sequences
    _kill_first(monkeypatch, owner, moment, pid)
    with pytest.raises(vmctl.InvalidState) as caught:
        vm.suspend(timeout=60)
    assert caught.value.state is State.CRASHED
    assert "went away" in str(caught.value)
    monkeypatch.undo()
    assert vm.state is State.CRASHED and vm.pid is None
    assert not (vm.hypervisor.store.path(vm.name) / "state.bin.tmp").exists(), "a half-written state was kept"  # type: ignore[attr-defined]
    vm.start()  # and the machine is usable again
    assert vm.state is State.RUNNING


def _at(moment: float, vm: vmctl.Machine, verb: str, snapshot: str, out: dict[str, Any]) -> None:
    while time.monotonic() < moment:
        pass  # a start line for both callers, not a wait for a state
    try:
        getattr(vm, verb)(snapshot)
    except BaseException as exc:  # reported to the test
        out["error"] = exc


def test_two_callers_on_one_snapshot_name(vm: vmctl.Machine) -> None:
    """Two handles (own connections) take, then delete, the same snapshot name at the same
    moment: one succeeds, the other gets SnapshotExists / SnapshotNotFound (the name is checked
    and taken in one section; it was a BackendError from qemu-img or QEMU)."""
    state_dir = vm.hypervisor.store.root  # type: ignore[attr-defined]
    other = vmctl.connect("qemu", state_dir=state_dir, accel="tcg").machine(vm.name)
    for i in range(6):
        for verb, refusal in (("snapshot", vmctl.SnapshotExists), ("delete_snapshot", vmctl.SnapshotNotFound)):
            outs: list[dict[str, Any]] = [{}, {}]
            moment = time.monotonic() + 0.05
            threads = [
                threading.Thread(target=_at, args=(moment, handle, verb, f"s{i}", out))
                for handle, out in zip((vm, other), outs, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            errors = [out.get("error") for out in outs]
            assert sum(e is None for e in errors) == 1, errors
            assert any(isinstance(e, refusal) for e in errors), errors
