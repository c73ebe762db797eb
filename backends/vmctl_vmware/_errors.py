"""vmrun's errors: an ``Error: <VIX error text>`` line on stdout, usually with exit status 255.

vmrun reports failures on stdout, not stderr, and some builds exit 0 after printing one, so the
output is checked as well as the status. Each message is classified by the VIX error text it
carries, so the machine can raise the matching vmctl error.

>>> from vmctl_vmware._errors import classify
>>> classify("The virtual machine is not powered on: /vms/a/a.vmx")
'not_running'
>>> classify("Cannot open VM: /vms/a/a.vmx, The virtual machine cannot be found")
'vm_not_found'
>>> error_code(classify("The file is already in use"))
<ErrorCode.BUSY: 'busy'>
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vmctl.errors import BackendError, ErrorCode

__all__ = ["ERROR_CODES", "VmrunError", "check_result", "classify", "error_code"]

NOT_RUNNING = "not_running"
IS_RUNNING = "is_running"
VM_NOT_FOUND = "vm_not_found"
TOOLS_NOT_RUNNING = "tools_not_running"
SNAPSHOT_NOT_FOUND = "snapshot_not_found"
SNAPSHOT_NOT_UNIQUE = "snapshot_not_unique"
NOT_SUPPORTED = "not_supported"
ENCRYPTED = "encrypted"
INVALID_ARGUMENT = "invalid_argument"
ALREADY_EXISTS = "already_exists"
IN_USE = "in_use"
HOST_UNREACHABLE = "host_unreachable"
PRODUCT_MISSING = "product_missing"
CONFIG_UNREADABLE = "config_unreadable"
PERMISSION = "permission"
OTHER = "other"

#: Each kind in vmctl's vocabulary.
ERROR_CODES: dict[str, ErrorCode] = {
    NOT_RUNNING: ErrorCode.INVALID_STATE,
    IS_RUNNING: ErrorCode.INVALID_STATE,
    VM_NOT_FOUND: ErrorCode.NOT_FOUND,
    TOOLS_NOT_RUNNING: ErrorCode.GUEST,
    SNAPSHOT_NOT_FOUND: ErrorCode.NOT_FOUND,
    SNAPSHOT_NOT_UNIQUE: ErrorCode.INVALID_ARGUMENT,
    NOT_SUPPORTED: ErrorCode.UNSUPPORTED,
    ENCRYPTED: ErrorCode.AUTH,
    INVALID_ARGUMENT: ErrorCode.INVALID_ARGUMENT,
    ALREADY_EXISTS: ErrorCode.EXISTS,
    IN_USE: ErrorCode.BUSY,
    HOST_UNREACHABLE: ErrorCode.CONNECTION,
    PRODUCT_MISSING: ErrorCode.UNSUPPORTED,
    CONFIG_UNREADABLE: ErrorCode.IO,
    PERMISSION: ErrorCode.AUTH,
    OTHER: ErrorCode.UNKNOWN,
}

# Checked in order: the Tools message also says "not running", and "is not running" must win
# over "running"; vmrun's "Unable to connect to host." line (kept before the Error: text, see
# check_result) says more than the error after it, unless that names a missing product.
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (PRODUCT_MISSING, re.compile(r"was specified, but not installed|specified version was not found", re.I)),
    (HOST_UNREACHABLE, re.compile(r"(unable|cannot|failed) to connect to (the )?host", re.I)),
    (ENCRYPTED, re.compile(r"password is required", re.I)),
    (TOOLS_NOT_RUNNING, re.compile(r"tools (are|is) not running|tools.*not running", re.I)),
    (NOT_RUNNING, re.compile(r"not powered on|needs to be powered on|is not running", re.I)),
    (IS_RUNNING, re.compile(r"should not be powered on|already running|already powered on", re.I)),
    (VM_NOT_FOUND, re.compile(r"cannot be found|file was not found|unknown file suffix", re.I)),
    (SNAPSHOT_NOT_UNIQUE, re.compile(r"does not uniquely identify", re.I)),
    (SNAPSHOT_NOT_FOUND, re.compile(r"file by that name does not exist|snapshot.*(not found|does not exist)", re.I)),
    (NOT_SUPPORTED, re.compile(r"not supported", re.I)),
    (INVALID_ARGUMENT, re.compile(r"parameters was invalid|invalid argument", re.I)),
    (ALREADY_EXISTS, re.compile(r"already exists", re.I)),  # VIX_E_FILE_ALREADY_EXISTS
    (IN_USE, re.compile(r"already in use|is locked|locked by another", re.I)),  # VIX_E_FILE_ALREADY_LOCKED
    (CONFIG_UNREADABLE, re.compile(r"cannot read the virtual machine configuration file", re.I)),
    (PERMISSION, re.compile(r"insufficient permissions|permission denied|access denied", re.I)),
)


def classify(message: str) -> str:
    """The kind of a vmrun error message (one of this module's constants)."""
    for kind, pattern in _KINDS:
        if pattern.search(message):
            return kind
    return OTHER


def error_code(kind: str) -> ErrorCode:
    """The :class:`ErrorCode` of a kind :func:`classify` returned."""
    return ERROR_CODES.get(kind, ErrorCode.UNKNOWN)


class VmrunError(BackendError):
    """vmrun failed. ``kind`` classifies ``vix_message``, the text after ``Error:``."""

    def __init__(self, vix_message: str, *, command: Sequence[str], status: int, stdout: str, stderr: str) -> None:
        self.vix_message = vix_message
        self.kind = classify(vix_message)
        super().__init__(
            f"vmrun {command[3] if len(command) > 3 else ''} failed (exit {status}): {vix_message}",
            command=list(command),
            status=status,
            stdout=stdout,
            stderr=stderr,
            code=error_code(self.kind),
            native=self.kind,
        )


#: A line vmrun prints before ``Error:`` when it cannot reach the VMware product it was told to use.
UNABLE_TO_CONNECT = "Unable to connect to host."
#: A line of vmrun's own log on stdout: ``2013-09-07T15:26:59.560| ServiceImpl_Opener: PID 4119``.
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+\|")


def check_result(command: Sequence[str], status: int, stdout: str, stderr: str) -> str:
    """Return vmrun's stdout, or raise :class:`VmrunError` if it reported a failure.

    A failure is a non-zero status, or an ``Error:`` line as the first line of output. Lines
    vmrun logs before its ``Error:`` line (``ServiceImpl_Opener: PID ...``) are not the message;
    ``Unable to connect to host.`` is kept in front of it.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    err_lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines + err_lines if line.startswith("Error:")]
    said = [line for line in lines if not _LOG_LINE.match(line)]
    first_is_error = bool(said) and (said[0].startswith("Error:") or said[0] == UNABLE_TO_CONNECT)
    if status == 0 and not first_is_error:
        return stdout
    if errors:
        message = errors[0][len("Error:") :].strip()
        before = lines[: lines.index(errors[0])] if errors[0] in lines else []
        if UNABLE_TO_CONNECT in before:
            message = f"{UNABLE_TO_CONNECT} {message}"
    elif lines or err_lines:
        message = (lines or err_lines)[0]
    else:
        message = f"no output, exit status {status}"
    raise VmrunError(message, command=command, status=status, stdout=stdout, stderr=stderr)
