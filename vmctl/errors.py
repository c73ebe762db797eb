"""The error tree: every error vmctl raises derives from :class:`VmctlError`.

>>> import vmctl
>>> issubclass(vmctl.MachineNotFound, vmctl.VmctlError)
True
>>> try:
...     vmctl.connect("no-such-backend")
... except vmctl.BackendUnavailable as exc:
...     print(exc.backend)
no-such-backend
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmctl.types import State

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "InvalidSpec",
    "InvalidState",
    "MachineExists",
    "MachineNotFound",
    "OperationTimeout",
    "SnapshotNotFound",
    "Unsupported",
    "VmctlError",
]


class VmctlError(Exception):
    """Base class of every error vmctl raises."""


class BackendUnavailable(VmctlError):
    """A backend cannot be used here: unknown name, a missing Python package or system tool.

    ``hint`` says what to install (``pip install vmctl[libvirt]``, ``apt-get install qemu-system-x86``).
    """

    def __init__(self, backend: str, reason: str, hint: str | None = None) -> None:
        self.backend = backend
        self.reason = reason
        self.hint = hint
        text = f"backend {backend!r} is unavailable: {reason}"
        if hint:
            text += f" (install it with: {hint})"
        super().__init__(text)


class InvalidSpec(VmctlError, ValueError):
    """A name, path or value given to vmctl is not acceptable; nothing was created or changed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {field}: {problem}")


class MachineNotFound(VmctlError, LookupError):
    """No machine of that name exists on the backend."""

    def __init__(self, name: str, backend: str = "") -> None:
        self.name = name
        self.backend = backend
        where = f" on backend {backend!r}" if backend else ""
        super().__init__(f"no machine named {name!r}{where}")


class MachineExists(VmctlError):
    """A machine of that name is already defined."""

    def __init__(self, name: str, backend: str = "") -> None:
        self.name = name
        self.backend = backend
        where = f" on backend {backend!r}" if backend else ""
        super().__init__(f"a machine named {name!r} already exists{where}")


class SnapshotNotFound(VmctlError, LookupError):
    """The machine has no snapshot of that name."""

    def __init__(self, machine: str, snapshot: str) -> None:
        self.machine = machine
        self.snapshot = snapshot
        super().__init__(f"machine {machine!r} has no snapshot named {snapshot!r}")


class InvalidState(VmctlError):
    """The verb is not allowed in the machine's current state (``state`` carries it)."""

    def __init__(self, machine: str, verb: str, state: State, allowed: Sequence[State] = ()) -> None:
        self.machine = machine
        self.verb = verb
        self.state = state
        self.allowed = tuple(allowed)
        text = f"cannot {verb} machine {machine!r} while it is {state.value}"
        if self.allowed:
            text += " (allowed from: " + ", ".join(s.value for s in self.allowed) + ")"
        super().__init__(text)


class Unsupported(VmctlError):
    """The backend cannot do this verb at all; vmctl never substitutes another one."""

    def __init__(self, backend: str, verb: str, why: str = "") -> None:
        self.backend = backend
        self.verb = verb
        text = f"backend {backend!r} does not support {verb}"
        if why:
            text += f": {why}"
        super().__init__(text)


class OperationTimeout(VmctlError, TimeoutError):
    """A wait reached its deadline."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} did not complete within {timeout:g} s")


class BackendError(VmctlError):
    """The hypervisor or its tool failed.

    Carries what was called (``command``: an argv list or an API call name), the exit
    ``status`` where there is one, the tool's ``stdout``/``stderr``, and the underlying
    exception as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] | str | None = None,
        status: int | None = None,
        stdout: str = "",
        stderr: str = "",
        code: str | None = None,
    ) -> None:
        self.message = message
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.code = code
        super().__init__(message)
