"""The error tree: every error vmctl raises derives from :class:`VmctlError`.

Every error pickles with its fields (for process pools, multiprocessing, pytest-xdist), and a
:class:`BackendError` says in :attr:`~BackendError.code` (an :class:`ErrorCode`) what kind of
failure the hypervisor reported, the same way on every backend, and whether retrying may help.

>>> import pickle, vmctl
>>> issubclass(vmctl.MachineNotFound, vmctl.VmctlError)
True
>>> try:
...     vmctl.connect("no-such-backend")
... except vmctl.BackendUnavailable as exc:
...     print(exc.backend)
no-such-backend
>>> err = pickle.loads(pickle.dumps(vmctl.MachineNotFound("web", "qemu")))
>>> err.name, str(err)
('web', "no machine named 'web' on backend 'qemu'")
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmctl.types import State

__all__ = [
    "TRANSIENT_CODES",
    "BackendError",
    "BackendUnavailable",
    "ErrorCode",
    "InvalidSpec",
    "InvalidState",
    "MachineExists",
    "MachineNotFound",
    "OperationTimeout",
    "SnapshotExists",
    "SnapshotNotFound",
    "Unsupported",
    "VmctlError",
    "os_error_code",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """Recreate an error from its message arguments without calling its ``__init__``.

    The fields come back from the pickled ``__dict__``; a built-in base (``OSError`` for
    ``TimeoutError``) gets its own ``__init__`` so that its C-level fields are set as well.
    """
    err = cls.__new__(cls, *args)
    builtin: Any = next(k for k in cls.__mro__ if k.__module__ == "builtins")
    builtin.__init__(err, *args)
    return err


class VmctlError(Exception):
    """Base class of every error vmctl raises.

    Subclasses take whatever ``__init__`` arguments they like: pickling does not call
    ``__init__`` but restores the message arguments and every attribute as they were.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args), dict(self.__dict__)


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


class SnapshotExists(InvalidSpec):
    """The machine already has a snapshot of that name (an :class:`InvalidSpec`, as it was
    before it had its own class, so existing handlers keep catching it)."""

    def __init__(self, machine: str, snapshot: str) -> None:
        self.machine = machine
        self.snapshot = snapshot
        super().__init__("snapshot name", f"machine {machine!r} already has a snapshot {snapshot!r}")


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


class ErrorCode(enum.StrEnum):
    """What kind of failure a :class:`BackendError` is, in words shared by every backend.

    Each backend maps its own error identifiers (libvirt's ``VIR_ERR_*`` codes, QMP error
    classes, VirtualBox's ``VBOX_E_*`` result codes, vmrun's ``Error:`` lines, vSphere fault
    classes) onto these; the identifier itself stays in :attr:`BackendError.native`. The
    members are strings, so ``err.code == "busy"`` works too.

    >>> ErrorCode("busy") is ErrorCode.BUSY, ErrorCode.BUSY in TRANSIENT_CODES
    (True, True)
    """

    #: Something the call names (a volume, file, pool, device, snapshot) does not exist.
    NOT_FOUND = "not_found"
    #: Something the call would create already exists.
    EXISTS = "exists"
    #: The object is not in a state that allows the call (e.g. "domain is not running").
    INVALID_STATE = "invalid_state"
    #: Another session or process holds the object for the moment (a lock). Transient.
    BUSY = "busy"
    #: The hypervisor, its daemon or its monitor cannot be reached, or the connection was lost. Transient.
    CONNECTION = "connection"
    #: The hypervisor gave up waiting for something on its side. Transient.
    TIMEOUT = "timeout"
    #: A login, permission or certificate was refused.
    AUTH = "auth"
    #: The hypervisor rejected a value or a configuration vmctl sent.
    INVALID_ARGUMENT = "invalid_argument"
    #: The hypervisor cannot do this (here, or with this configuration).
    UNSUPPORTED = "unsupported"
    #: The host ran out of something: disk space, memory, a limit.
    RESOURCE = "resource"
    #: Reading or writing a file or disk image failed.
    IO = "io"
    #: The call needs something in the guest (VMware Tools, a guest agent) that is not running.
    GUEST = "guest"
    #: The hypervisor reported an internal error.
    INTERNAL = "internal"
    #: The hypervisor answered something vmctl cannot understand.
    PROTOCOL = "protocol"
    #: The backend could not tell (a tool failed without an identifiable error).
    UNKNOWN = "unknown"


#: Codes whose errors are worth retrying as they are, after a pause.
TRANSIENT_CODES: frozenset[ErrorCode] = frozenset({ErrorCode.BUSY, ErrorCode.CONNECTION, ErrorCode.TIMEOUT})


_ERRNO_CODES: dict[int, ErrorCode] = {
    errno.ENOENT: ErrorCode.NOT_FOUND,
    errno.EEXIST: ErrorCode.EXISTS,
    errno.EACCES: ErrorCode.AUTH,
    errno.EPERM: ErrorCode.AUTH,
    errno.EBUSY: ErrorCode.BUSY,
    errno.EAGAIN: ErrorCode.BUSY,
    errno.ETIMEDOUT: ErrorCode.TIMEOUT,
    errno.ECONNREFUSED: ErrorCode.CONNECTION,
    errno.ECONNRESET: ErrorCode.CONNECTION,
    errno.ENOTCONN: ErrorCode.CONNECTION,
    errno.EPIPE: ErrorCode.CONNECTION,
    errno.ENOSPC: ErrorCode.RESOURCE,
    errno.EDQUOT: ErrorCode.RESOURCE,
    errno.ENOMEM: ErrorCode.RESOURCE,
    errno.EMFILE: ErrorCode.RESOURCE,
}


def os_error_code(exc: OSError) -> ErrorCode:
    """The :class:`ErrorCode` of a failed system call (``io`` for the errnos not listed).

    >>> os_error_code(OSError(errno.ENOSPC, "No space left on device"))
    <ErrorCode.RESOURCE: 'resource'>
    """
    return _ERRNO_CODES.get(exc.errno or 0, ErrorCode.IO)


class BackendError(VmctlError):
    """The hypervisor or its tool failed.

    Carries what was called (``command``: an argv list or an API call name), the exit
    ``status`` where there is one, the tool's ``stdout``/``stderr``, and the underlying
    exception as ``__cause__``.

    ``code`` is an :class:`ErrorCode` saying what kind of failure it is; ``native`` is the
    backend's own identifier of the error (``VIR_ERR_NO_DOMAIN``, ``GenericError``,
    ``VBOX_E_INVALID_OBJECT_STATE``, a vmrun error kind, a vSphere fault class name) or None;
    ``transient`` says whether the same call may succeed if retried after a pause (by default:
    ``code`` is one of :data:`TRANSIENT_CODES`). A ``code`` string outside the vocabulary is kept
    as ``native`` and the code becomes ``unknown``.

    >>> err = BackendError("QEMU refused stop", code=ErrorCode.CONNECTION, native="EOF")
    >>> err.code, err.native, err.transient
    (<ErrorCode.CONNECTION: 'connection'>, 'EOF', True)
    >>> BackendError("tool failed").code
    <ErrorCode.UNKNOWN: 'unknown'>
    """

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] | str | None = None,
        status: int | None = None,
        stdout: str = "",
        stderr: str = "",
        code: ErrorCode | str | None = None,
        native: str | None = None,
        transient: bool | None = None,
    ) -> None:
        self.message = message
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        if code is None:
            code = ErrorCode.UNKNOWN
        elif not isinstance(code, ErrorCode):
            try:
                code = ErrorCode(code)
            except ValueError:
                native = code if native is None else native
                code = ErrorCode.UNKNOWN
        self.code: ErrorCode = code
        self.native = native
        self.transient = code in TRANSIENT_CODES if transient is None else transient
        super().__init__(message)
