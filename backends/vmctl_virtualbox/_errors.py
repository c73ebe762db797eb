"""VirtualBox errors: reading them from VBoxManage's stderr and mapping them to vmctl's error tree.

VBoxManage prints an error as ``VBoxManage: error: <text>`` lines, usually followed by
``VBoxManage: error: Details: code VBOX_E_... (0x80bb000N), component ..., interface ...`` and
``VBoxManage: error: Context: "..." at line N of file ...``. The exit status is usually 1 but can
be 0, so the text decides, not the status.

>>> err = parse_error(
...     "VBoxManage: error: Could not find a registered machine named 'x'\\n"
...     "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, "
...     "interface IVirtualBox, callee nsISupports\\n")
>>> err.code, hex(err.hresult), err.text
('VBOX_E_OBJECT_NOT_FOUND', '0x80bb0001', "Could not find a registered machine named 'x'")
>>> error_code(err)
<ErrorCode.NOT_FOUND: 'not_found'>
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vmctl.errors import TRANSIENT_CODES as _TRANSIENT
from vmctl.errors import (
    BackendError,
    ErrorCode,
    InvalidState,
    MachineNotFound,
    SnapshotNotFound,
    VmctlError,
)
from vmctl.types import State

__all__ = [
    "CODES",
    "ERROR_CODES",
    "NS_ALIASES",
    "TRANSIENT_CODES",
    "VBoxErrorInfo",
    "code_name",
    "error_code",
    "is_transient",
    "map_error",
    "parse_error",
]

#: VirtualBox's own result codes (SDK reference, "VirtualBox COM result codes").
CODES: dict[int, str] = {
    0x80BB0001: "VBOX_E_OBJECT_NOT_FOUND",
    0x80BB0002: "VBOX_E_INVALID_VM_STATE",
    0x80BB0003: "VBOX_E_VM_ERROR",
    0x80BB0004: "VBOX_E_FILE_ERROR",
    0x80BB0005: "VBOX_E_IPRT_ERROR",
    0x80BB0006: "VBOX_E_PDM_ERROR",
    0x80BB0007: "VBOX_E_INVALID_OBJECT_STATE",
    0x80BB0008: "VBOX_E_HOST_ERROR",
    0x80BB0009: "VBOX_E_NOT_SUPPORTED",
    0x80BB000A: "VBOX_E_XML_ERROR",
    0x80BB000B: "VBOX_E_INVALID_SESSION_STATE",
    0x80BB000C: "VBOX_E_OBJECT_IN_USE",
    0x80BB000D: "VBOX_E_PASSWORD_INCORRECT",
    0x80BB000E: "VBOX_E_MAXIMUM_REACHED",
    0x80BB000F: "VBOX_E_GSTCTL_GUEST_ERROR",
    0x80BB0010: "VBOX_E_TIMEOUT",
    0x80BB0011: "VBOX_E_DND_ERROR",
    0x80BB0012: "VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED",
    0x80004005: "E_FAIL",
    0x80070005: "E_ACCESSDENIED",
    0x80070057: "E_INVALIDARG",
    0x80080005: "CO_E_SERVER_EXEC_FAILURE",
    0x80004001: "E_NOTIMPL",
    0x80004004: "E_ABORT",
    0x8000FFFF: "E_UNEXPECTED",
    0x8007000E: "E_OUTOFMEMORY",
    0x80040154: "REGDB_E_CLASSNOTREG",
    0x800706BA: "RPC_S_SERVER_UNAVAILABLE",
    0x800706BE: "RPC_S_CALL_FAILED",
}

#: XPCOM (Linux, macOS) names of the same results, as VBoxManage prints them there
#: (``Details: code NS_ERROR_FAILURE (0x80004005)``); Windows prints the COM names above.
NS_ALIASES: dict[str, str] = {
    "NS_ERROR_FAILURE": "E_FAIL",
    "NS_ERROR_INVALID_ARG": "E_INVALIDARG",
    "NS_ERROR_NOT_IMPLEMENTED": "E_NOTIMPL",
    "NS_ERROR_ABORT": "E_ABORT",
    "NS_ERROR_UNEXPECTED": "E_UNEXPECTED",
    "NS_ERROR_OUT_OF_MEMORY": "E_OUTOFMEMORY",
    "NS_ERROR_FACTORY_NOT_REGISTERED": "REGDB_E_CLASSNOTREG",
    "NS_ERROR_CALL_FAILED": "RPC_S_CALL_FAILED",
    "NS_ERROR_SOCKET_FAIL": "RPC_S_SERVER_UNAVAILABLE",
}

#: VirtualBox's result codes in vmctl's vocabulary. VBOX_E_INVALID_OBJECT_STATE is what
#: VirtualBox says when another session holds the machine's lock for a moment, and
#: CO_E_SERVER_EXEC_FAILURE when VBoxSVC could not be reached: both are transient (and retried by
#: BOINC's vboxwrapper with exponential backoff).
ERROR_CODES: dict[str, ErrorCode] = {
    "VBOX_E_OBJECT_NOT_FOUND": ErrorCode.NOT_FOUND,
    "VBOX_E_INVALID_VM_STATE": ErrorCode.INVALID_STATE,
    "VBOX_E_VM_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_FILE_ERROR": ErrorCode.IO,
    "VBOX_E_IPRT_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_PDM_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_INVALID_OBJECT_STATE": ErrorCode.BUSY,
    "VBOX_E_HOST_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_NOT_SUPPORTED": ErrorCode.UNSUPPORTED,
    "VBOX_E_XML_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_INVALID_SESSION_STATE": ErrorCode.BUSY,
    "VBOX_E_OBJECT_IN_USE": ErrorCode.INVALID_STATE,
    "VBOX_E_PASSWORD_INCORRECT": ErrorCode.AUTH,
    "VBOX_E_MAXIMUM_REACHED": ErrorCode.RESOURCE,
    "VBOX_E_GSTCTL_GUEST_ERROR": ErrorCode.GUEST,
    "VBOX_E_TIMEOUT": ErrorCode.TIMEOUT,
    "VBOX_E_DND_ERROR": ErrorCode.GUEST,
    "VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED": ErrorCode.UNSUPPORTED,
    "E_FAIL": ErrorCode.UNKNOWN,
    "E_ACCESSDENIED": ErrorCode.AUTH,
    "E_INVALIDARG": ErrorCode.INVALID_ARGUMENT,
    "CO_E_SERVER_EXEC_FAILURE": ErrorCode.CONNECTION,
    "E_NOTIMPL": ErrorCode.UNSUPPORTED,
    "E_ABORT": ErrorCode.UNKNOWN,
    "E_UNEXPECTED": ErrorCode.INTERNAL,
    "E_OUTOFMEMORY": ErrorCode.RESOURCE,
    "REGDB_E_CLASSNOTREG": ErrorCode.CONNECTION,
    "RPC_S_SERVER_UNAVAILABLE": ErrorCode.CONNECTION,
    "RPC_S_CALL_FAILED": ErrorCode.CONNECTION,
}

#: VirtualBox codes of the errors worth retrying (those mapped to a transient :class:`ErrorCode`).
TRANSIENT_CODES = frozenset(name for name, code in ERROR_CODES.items() if code in _TRANSIENT)

_PREFIX = re.compile(r"^(?:VBoxManage(?:\.exe)?|VBoxManage-sim): (?:fatal )?error: ?(.*)$")
_DETAILS = re.compile(r"Details: code (?P<code>[A-Z_][A-Z0-9_]*) \((?P<hr>0x[0-9a-fA-F]+)\)")
_HEX = re.compile(r"\((0x8[0-9a-fA-F]{7})\)")


@dataclass(frozen=True)
class VBoxErrorInfo:
    """What an error printed by VBoxManage says."""

    text: str
    code: str | None = None
    hresult: int | None = None
    context: str | None = None


def code_name(hresult: int) -> str:
    return CODES.get(hresult & 0xFFFFFFFF, f"0x{hresult & 0xFFFFFFFF:08x}")


def parse_error(stderr: str, stdout: str = "") -> VBoxErrorInfo | None:
    """The error in VBoxManage's output, or None if it printed none."""
    texts: list[str] = []
    context = None
    code = None
    hresult = None
    for line in stderr.splitlines():
        m = _PREFIX.match(line.strip())
        if not m:
            continue
        body = m.group(1).strip()
        details = _DETAILS.search(body)
        if details:
            if code is None:
                code = details.group("code")
                hresult = int(details.group("hr"), 16)
            continue
        if body.startswith("Context:"):
            context = context or body[len("Context:") :].strip()
            continue
        if body and body != "--------":
            texts.append(body)
    if not texts and code is None:
        return None
    if code is None:
        # Some errors carry the code only in the text, e.g. "... (0x80bb0007)".
        m = _HEX.search("\n".join(texts) + "\n" + stdout)
        if m:
            hresult = int(m.group(1), 16)
            code = CODES.get(hresult)
    return VBoxErrorInfo(text=texts[0] if texts else (code or "error"), code=code, hresult=hresult, context=context)


def error_code(info: VBoxErrorInfo) -> ErrorCode:
    """The :class:`ErrorCode` of an error VirtualBox reported.

    The code decides; without one, a machine lock held by another session is told by its text.
    """
    if info.code is not None:
        name = NS_ALIASES.get(info.code, info.code)
        if name not in ERROR_CODES and info.hresult is not None:
            name = CODES.get(info.hresult & 0xFFFFFFFF, name)
        return ERROR_CODES.get(name, ErrorCode.UNKNOWN)
    text = info.text
    if "is already locked" in text or "being locked or unlocked" in text:
        return ErrorCode.BUSY
    return ErrorCode.UNKNOWN


def is_transient(info: VBoxErrorInfo) -> bool:
    """True if retrying the same call after a pause may succeed (a lock held for a moment)."""
    return error_code(info) in _TRANSIENT


# VBoxManageControlVM.cpp's refusal of savestate when the machine is neither running nor paused,
# RTMsgError("Machine in invalid state %d -- %s.", MachineState, machineStateToName(state, false)):
# no COM result code; "%d" is the MachineState number (7.x: Running 6, Stopping 12).
_CONTROLVM_STATE = re.compile(r"^Machine in invalid state -?\d+ -- [a-z -]+(?: \([a-z]+\))?\.?$")
# VBoxManageControlVM.cpp, when the machine has no session: "Machine '%s' is not currently running".
_NOT_RUNNING = re.compile(r"^Machine '.*' is not currently running\.?$")
# ConsoleImpl.cpp's refusal, printed with VBOX_E_INVALID_VM_STATE (read by its form when a caller
# kept only the first line): "Invalid machine state: PoweredOff (must be Running, Paused or Stuck)".
_INVALID_MACHINE_STATE = re.compile(r"^Invalid machine state: [A-Za-z]+(?: \(must be [A-Za-z, ]+\))?\.?$")
# VBOX_E_OBJECT_NOT_FOUND texts (VirtualBoxImpl.cpp findMachine, MachineImpl.cpp findSnapshotByName
# / findSnapshotById): the form, not a word in the name, tells a machine from a snapshot.
_MACHINE_NOT_FOUND = re.compile(
    r"^Could not find a registered machine (?:named '(?P<name>.*)'|with UUID \{(?P<uuid>[0-9a-fA-F-]+)\})\.?$"
)
_SNAPSHOT_NOT_FOUND = re.compile(
    r"^Could not find a snapshot (?:named '(?P<name>.*)'|with UUID \{(?P<uuid>[0-9a-fA-F-]+)\})"
    r"(?: in machine '.*')?\.?$"
)


def map_error(
    info: VBoxErrorInfo,
    *,
    command: Sequence[str] | str,
    status: int | None,
    stdout: str = "",
    stderr: str = "",
    machine: str | None = None,
    verb: str = "",
) -> VmctlError:
    """The vmctl error for a VirtualBox error.

    By the result code and the exact form of the text, never by a word in it (a machine named
    ``snapshot-runner`` stays a machine): VBOX_E_OBJECT_NOT_FOUND with "Could not find a
    registered machine named '...'" / "... with UUID {...}" -> :class:`MachineNotFound`, with
    "Could not find a snapshot named '...'" / "... with UUID {...}" -> :class:`SnapshotNotFound`;
    VBOX_E_INVALID_VM_STATE, and without a code controlvm's "Machine '...' is not currently
    running" and "Machine in invalid state N -- NAME." -> :class:`InvalidState` (with state
    UNKNOWN: the caller fills in the state it reads); anything else (another object not found,
    e.g. a medium) -> :class:`BackendError` carrying command, status, output and the code.
    """
    text = info.text
    code = NS_ALIASES.get(info.code or "", info.code)
    machine_nf = _MACHINE_NOT_FOUND.match(text)
    snapshot_nf = _SNAPSHOT_NOT_FOUND.match(text)
    err: VmctlError
    if code == "VBOX_E_OBJECT_NOT_FOUND" and machine_nf:
        err = MachineNotFound(machine_nf.group("name") or machine_nf.group("uuid") or machine or "?", "virtualbox")
    elif code == "VBOX_E_OBJECT_NOT_FOUND" and snapshot_nf:
        err = SnapshotNotFound(machine or "?", snapshot_nf.group("name") or snapshot_nf.group("uuid") or "?")
    elif code == "VBOX_E_INVALID_VM_STATE" or (
        code is None
        and (_NOT_RUNNING.match(text) or _CONTROLVM_STATE.match(text) or _INVALID_MACHINE_STATE.match(text))
    ):
        err = InvalidState(machine or "?", verb or "operate", State.UNKNOWN)
    else:
        return BackendError(
            f"VBoxManage failed: {text}" + (f" ({info.code})" if info.code else ""),
            command=list(command) if not isinstance(command, str) else command,
            status=status,
            stdout=stdout,
            stderr=stderr,
            code=error_code(info),
            native=info.code,
        )
    # The raw output and VirtualBox's code travel with every mapped error, for logs.
    vars(err).update(
        command=list(command) if not isinstance(command, str) else command,
        status=status,
        stderr=stderr,
        native=info.code,
    )
    return err
