"""libvirt's error numbers (``VIR_ERR_*``) in vmctl's :class:`~vmctl.errors.ErrorCode` vocabulary.

>>> import libvirt
>>> error_name(libvirt.VIR_ERR_NO_DOMAIN), error_code(libvirt.VIR_ERR_NO_DOMAIN)
('VIR_ERR_NO_DOMAIN', <ErrorCode.NOT_FOUND: 'not_found'>)
>>> error_name(libvirt.VIR_ERR_INTERNAL_ERROR)
'VIR_ERR_INTERNAL_ERROR'
"""

from __future__ import annotations

import libvirt

from vmctl.errors import ErrorCode

__all__ = ["error_code", "error_name"]

# VIR_ERR_NONE, _WARNING and _ERROR are error *levels* (0, 1, 2) that share their values with
# VIR_ERR_OK, VIR_ERR_INTERNAL_ERROR and VIR_ERR_NO_MEMORY: they must not name error numbers.
_LEVELS = ("VIR_ERR_OK", "VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR")
_ERROR_NAMES = {getattr(libvirt, n): n for n in dir(libvirt) if n.startswith("VIR_ERR_") and n not in _LEVELS}

_BY_CODE: dict[ErrorCode, tuple[str, ...]] = {
    ErrorCode.NOT_FOUND: (
        "NO_DOMAIN", "NO_NETWORK", "NO_STORAGE_POOL", "NO_STORAGE_VOL", "NO_NODE_DEVICE", "NO_INTERFACE",
        "NO_NWFILTER", "NO_SECRET", "NO_DOMAIN_SNAPSHOT", "NO_DOMAIN_METADATA", "NO_SERVER", "NO_CLIENT",
        "DEVICE_MISSING", "NO_NWFILTER_BINDING", "NO_DOMAIN_CHECKPOINT", "NO_DOMAIN_BACKUP", "NO_NETWORK_PORT",
        "NO_HOSTNAME",
    ),
    ErrorCode.EXISTS: ("DOM_EXIST", "NETWORK_EXIST", "STORAGE_VOL_EXIST", "STORAGE_POOL_BUILT", "NETWORK_PORT_EXIST"),
    ErrorCode.INVALID_STATE: (
        "OPERATION_INVALID", "SNAPSHOT_REVERT_RISKY", "BLOCK_COPY_ACTIVE", "CHECKPOINT_INCONSISTENT",
    ),
    ErrorCode.BUSY: ("RESOURCE_BUSY",),
    ErrorCode.CONNECTION: ("NO_CONNECT", "INVALID_CONN", "RPC", "UNKNOWN_HOST", "SSH", "LIBSSH", "GNUTLS_ERROR"),
    ErrorCode.TIMEOUT: ("OPERATION_TIMEOUT",),
    ErrorCode.AUTH: ("AUTH_FAILED", "AUTH_CANCELLED", "AUTH_UNAVAILABLE", "OPERATION_DENIED", "ACCESS_DENIED"),
    ErrorCode.INVALID_ARGUMENT: (
        "INVALID_ARG", "XML_ERROR", "XML_DETAIL", "XML_INVALID_SCHEMA", "CONF_SYNTAX", "PARSE_FAILED", "OS_TYPE",
        "NO_KERNEL", "NO_ROOT", "NO_SOURCE", "NO_TARGET", "NO_NAME", "NO_OS", "NO_DEVICE", "INVALID_MAC",
        "MULTIPLE_INTERFACES", "MULTIPLE_DOMAINS", "OVERFLOW", "CPU_INCOMPATIBLE", "MIGRATE_UNSAFE",
        "INVALID_DOMAIN", "INVALID_NETWORK", "INVALID_STORAGE_POOL", "INVALID_STORAGE_VOL", "INVALID_NODE_DEVICE",
        "INVALID_INTERFACE", "INVALID_NWFILTER", "INVALID_SECRET", "INVALID_DOMAIN_SNAPSHOT", "INVALID_STREAM",
        "INVALID_NWFILTER_BINDING", "INVALID_DOMAIN_CHECKPOINT", "INVALID_NETWORK_PORT",
    ),
    ErrorCode.UNSUPPORTED: (
        "NO_SUPPORT", "CONFIG_UNSUPPORTED", "ARGUMENT_UNSUPPORTED", "OPERATION_UNSUPPORTED", "NO_SECURITY_MODEL",
    ),
    ErrorCode.RESOURCE: ("NO_MEMORY", "DRIVER_FULL"),
    ErrorCode.IO: ("SYSTEM_ERROR", "OPEN_FAILED", "READ_FAILED", "WRITE_FAILED", "STORAGE_PROBE_FAILED"),
    ErrorCode.GUEST: ("AGENT_UNRESPONSIVE", "AGENT_UNSYNCED"),
    ErrorCode.INTERNAL: ("INTERNAL_ERROR",),
}  # fmt: skip

_CODES: dict[int, ErrorCode] = {
    getattr(libvirt, f"VIR_ERR_{name}"): code
    for code, names in _BY_CODE.items()
    for name in names
    if hasattr(libvirt, f"VIR_ERR_{name}")  # older libvirt-python lacks the newest numbers
}


def error_name(code: int | None) -> str | None:
    """``VIR_ERR_NO_DOMAIN`` for 42, and so on."""
    return None if code is None else _ERROR_NAMES.get(code, str(code))


def error_code(code: int | None) -> ErrorCode:
    """The :class:`ErrorCode` of a libvirt error number (``unknown`` for the others)."""
    return ErrorCode.UNKNOWN if code is None else _CODES.get(code, ErrorCode.UNKNOWN)
