"""Errors of the vSphere backend that refine vmctl's error tree (importable without pyvmomi)."""

from __future__ import annotations

from vmctl.errors import BackendError, ErrorCode

__all__ = ["ToolsUnavailable"]


class ToolsUnavailable(BackendError):
    """A graceful shutdown or reboot needs VMware Tools running in the guest, and they are not.

    Use ``poweroff()`` or ``restart(hard=True)`` instead, or install and start open-vm-tools.
    """

    def __init__(self, machine: str, verb: str, tools_state: str | None) -> None:
        self.machine = machine
        self.verb = verb
        self.tools_state = tools_state
        super().__init__(
            f"cannot {verb} machine {machine!r} gracefully: VMware Tools are not running in its guest "
            f"(toolsRunningStatus={tools_state or 'unset'}); use poweroff() or restart(hard=True)",
            command=verb,
            code=ErrorCode.GUEST,
            native="ToolsUnavailable",
        )
