"""vSphere faults mapped to vmctl's error tree.

Faults are told apart by class, never by message: vcsim's messages are Go type names
(``*types.InvalidPowerState``), real vCenter's are localised sentences.
"""

from __future__ import annotations

from collections.abc import Callable

from vmctl.errors import (
    BackendError,
    InvalidState,
    MachineExists,
    MachineNotFound,
    SnapshotNotFound,
    Unsupported,
    VmctlError,
)
from vmctl.types import State

from ._errors import ToolsUnavailable
from ._session import fault_code, fault_name, fault_text, vim, vmodl

__all__ = ["map_fault"]

BACKEND = "vsphere"


def map_fault(
    fault: BaseException,
    *,
    machine: str,
    verb: str,
    state: Callable[[], State],
    snapshot: str | None = None,
    tools_state: str | None = None,
) -> VmctlError:
    """The vmctl error for a fault raised by ``verb`` on ``machine``.

    ``state`` reads the machine's current state (for :class:`InvalidState`); ``snapshot`` names the
    snapshot the verb was about, so that a missing one is :class:`SnapshotNotFound`.
    """
    if isinstance(fault, VmctlError):
        return fault
    if isinstance(fault, vim.fault.InvalidState):  # InvalidPowerState, InvalidHostState, ...
        try:
            current = state()
        except VmctlError:
            current = State.UNKNOWN
        return InvalidState(machine, verb, current)
    if isinstance(fault, vmodl.fault.ManagedObjectNotFound):
        obj = getattr(fault, "obj", None)
        if snapshot is not None and isinstance(obj, vim.vm.Snapshot):
            return SnapshotNotFound(machine, snapshot)
        return MachineNotFound(machine, BACKEND)
    if isinstance(fault, vim.fault.NotFound) and snapshot is not None:
        return SnapshotNotFound(machine, snapshot)
    if isinstance(fault, vim.fault.DuplicateName):
        return MachineExists(machine, BACKEND)
    if isinstance(fault, vim.fault.ToolsUnavailable):
        return ToolsUnavailable(machine, verb, tools_state)
    if isinstance(fault, (vmodl.fault.NotSupported, vmodl.fault.NotImplemented, vmodl.fault.MethodNotFound)):
        return Unsupported(BACKEND, verb, f"the server refused it ({fault_text(fault)})")
    return BackendError(
        f"{verb} {machine}: {fault_text(fault)}", command=verb, code=fault_code(fault), native=fault_name(fault)
    )
