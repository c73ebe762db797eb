"""vmctl: one lifecycle interface for virtual machines on any hypervisor.

>>> import vmctl
>>> sorted(b.name for b in vmctl.backends())[:2]
['libvirt', 'memory']
>>> hv = vmctl.connect("memory")
>>> hv.capabilities.pause
True
"""

import logging

from vmctl import display as display  # registers the HTML display of machines with a running IPython
from vmctl.errors import (
    BackendError,
    BackendUnavailable,
    ErrorCode,
    InvalidSpec,
    InvalidState,
    MachineExists,
    MachineNotFound,
    OperationTimeout,
    SnapshotExists,
    SnapshotNotFound,
    Unsupported,
    VmctlError,
)
from vmctl.interface import Hypervisor, Machine
from vmctl.registry import BackendProvider, backends, connect
from vmctl.screenshot import Screenshot
from vmctl.types import (
    BackendInfo,
    Capabilities,
    DiskUsage,
    MachineSpec,
    Network,
    PortForward,
    Snapshot,
    State,
    Usage,
)

__version__ = "0.1.0"

logging.getLogger("vmctl").addHandler(logging.NullHandler())

__all__ = [
    "BackendError",
    "BackendInfo",
    "BackendProvider",
    "BackendUnavailable",
    "Capabilities",
    "DiskUsage",
    "ErrorCode",
    "Hypervisor",
    "InvalidSpec",
    "InvalidState",
    "Machine",
    "MachineExists",
    "MachineNotFound",
    "MachineSpec",
    "Network",
    "OperationTimeout",
    "PortForward",
    "Screenshot",
    "Snapshot",
    "SnapshotExists",
    "SnapshotNotFound",
    "State",
    "Unsupported",
    "Usage",
    "VmctlError",
    "backends",
    "connect",
]
