"""vSphere faults mapped to vmctl's error tree, and task and call deadlines (no server needed)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pyVmomi import vim, vmodl

import vmctl
from vmctl import State
from vmctl_vsphere import ToolsUnavailable
from vmctl_vsphere._faults import map_fault
from vmctl_vsphere._session import Session


def mapped(fault: BaseException, snapshot: str | None = None) -> vmctl.VmctlError:
    return map_fault(fault, machine="m1", verb="start", state=lambda: State.SUSPENDED, snapshot=snapshot)


def test_invalid_power_state_is_invalid_state_with_the_current_state() -> None:
    err = mapped(vim.fault.InvalidPowerState(msg="*types.InvalidPowerState"))
    assert isinstance(err, vmctl.InvalidState) and err.state is State.SUSPENDED and err.verb == "start"


def test_other_invalid_states_too() -> None:
    assert isinstance(mapped(vim.fault.InvalidState()), vmctl.InvalidState)


def test_state_unreadable_while_mapping() -> None:
    def broken() -> State:
        raise vmctl.BackendError("gone")

    err = map_fault(vim.fault.InvalidPowerState(), machine="m1", verb="stop", state=broken)
    assert isinstance(err, vmctl.InvalidState) and err.state is State.UNKNOWN


def test_missing_objects() -> None:
    assert isinstance(mapped(vmodl.fault.ManagedObjectNotFound(obj=vim.VirtualMachine("vm-9"))), vmctl.MachineNotFound)
    gone_snapshot = vmodl.fault.ManagedObjectNotFound(obj=vim.vm.Snapshot("snapshot-3"))
    assert isinstance(mapped(gone_snapshot, snapshot="s1"), vmctl.SnapshotNotFound)
    assert isinstance(mapped(vim.fault.NotFound(), snapshot="s1"), vmctl.SnapshotNotFound)


def test_duplicate_name_is_machine_exists() -> None:
    assert isinstance(mapped(vim.fault.DuplicateName(name="m1")), vmctl.MachineExists)


def test_tools_unavailable_is_a_backend_error_subclass() -> None:
    err = mapped(vim.fault.ToolsUnavailable())
    assert (
        isinstance(err, ToolsUnavailable)
        and isinstance(err, vmctl.BackendError)
        and err.code == "guest"
        and err.native == "ToolsUnavailable"
    )


def test_unimplemented_methods_are_unsupported() -> None:
    for fault in (
        vmodl.fault.MethodNotFound(method="RebootGuest"),
        vmodl.fault.NotImplemented(),
        vmodl.fault.NotSupported(),
    ):
        err = mapped(fault)
        assert isinstance(err, vmctl.Unsupported) and err.backend == "vsphere"


def test_everything_else_is_a_backend_error_named_by_class() -> None:
    err = mapped(vim.fault.FileFault(msg="*types.FileFault", file="[ds] x"))
    assert isinstance(err, vmctl.BackendError) and err.code == "io" and err.native == "FileFault"
    assert str(err).startswith("start m1: FileFault")
    assert isinstance(mapped(vmodl.fault.SystemError(reason="boom")), vmctl.BackendError)


# -- tasks and calls ----------------------------------------------------------------------------
class FakeTask:
    _moId = "task-1"


def session_answering(*answers: dict[str, Any]) -> tuple[Session, list[str]]:
    """A Session whose property reads return ``answers`` (the last one forever)."""
    session = object.__new__(Session)
    session.host, session.port, session.timeout = "fake", 443, 5.0
    calls: list[str] = []
    queue = list(answers)

    def props(obj: Any, paths: list[str]) -> dict[str, Any]:
        calls.append("props")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    session.props = props  # type: ignore[method-assign]
    session._cancel = lambda task: calls.append("cancel")  # type: ignore[method-assign]
    return session, calls


def test_a_task_that_never_ends_times_out_and_is_cancelled() -> None:
    session, calls = session_answering({"info.state": "running"})
    started = time.monotonic()
    with pytest.raises(vmctl.OperationTimeout) as err:
        session.wait_task(FakeTask(), 0.4, "power on m1")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.0
    assert calls[-1] == "cancel" and calls.count("props") > 3
    assert "power on m1" in str(err.value) and "running" in str(err.value)


def test_task_polling_backs_off() -> None:
    session, calls = session_answering({"info.state": "queued"})
    with pytest.raises(vmctl.OperationTimeout):
        session.wait_task(FakeTask(), 2.0, "x")
    assert calls.count("props") < 25, "polling must slow down to at most two reads a second"


def test_task_result_and_fault() -> None:
    session, _ = session_answering({"info.state": "running"}, {"info.state": "success", "info.result": 42})
    assert session.wait_task(FakeTask(), 5, "x") == 42
    fault = vim.fault.InvalidPowerState(msg="*types.InvalidPowerState")
    session, _ = session_answering({"info.state": "error", "info.error": fault})
    with pytest.raises(vim.fault.InvalidPowerState):
        session.wait_task(FakeTask(), 5, "x")


def test_transport_failures_become_vmctl_errors() -> None:
    session, _ = session_answering({})

    def reset() -> None:
        raise ConnectionResetError("reset by peer")

    def slow() -> None:
        raise TimeoutError

    with pytest.raises(vmctl.BackendError) as err:
        session.invoke("PowerOnVM_Task", reset)
    assert err.value.code == "connection" and err.value.command == "PowerOnVM_Task"
    with pytest.raises(vmctl.OperationTimeout):
        session.invoke("PowerOnVM_Task", slow)


def test_programming_errors_are_not_disguised() -> None:
    session, _ = session_answering({})

    def bug() -> None:
        raise KeyError("ours")

    with pytest.raises(KeyError):
        session.invoke("x", bug)
