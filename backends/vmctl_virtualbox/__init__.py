"""The VirtualBox backend: VirtualBox 7 through ``VBoxManage`` or the SDK's ``vboxapi`` bindings.

``vmctl.connect("virtualbox", ...)`` options:

``vboxmanage``
    Path of the VBoxManage executable (default: found on PATH, or where VirtualBox installs it).
``transport``
    ``"auto"`` (the default: ``vboxapi`` if it imports and reaches VirtualBox, else VBoxManage),
    ``"vboxmanage"`` or ``"vboxapi"``. The vboxapi transport is written against VirtualBox's
    documented API but has not been run against a real VirtualBox: only the VBoxManage transport
    is tested, against a simulator of VBoxManage (VirtualBox cannot run where vmctl is built).
``base_folder``
    Where VM folders go: each machine gets ``base_folder/<name>/`` holding its settings, logs,
    saved states and its differencing image (default ``$VMCTL_STATE_DIR/virtualbox/machines``).
``timeout``, ``retries``, ``retry_delay``
    Seconds allowed per VBoxManage call (120); how many times a transient "machine is locked"
    error (VBOX_E_INVALID_OBJECT_STATE) is retried (5), starting after ``retry_delay`` seconds
    (0.5) and doubling.
``settle_timeout``
    How long a state read waits for a transitional state (starting, stopping, saving, ...) to end.
``env``
    Extra environment variables for VBoxManage (e.g. ``VBOX_USER_HOME``).

VBoxManage runs with ``LC_ALL``/``LANG``/``LANGUAGE`` set to ``C.UTF-8`` (VirtualBox 7.0 prints
nothing under ``LANG=C``) and its output is read as strict UTF-8; a command that always prints
something and printed nothing raises ``BackendError`` with code ``protocol``. Output is read
line by line: snapshot names and descriptions as printed (VBoxManage does not escape them; a
snapshot is known by its UUID), lines such as ``VideoMode="720,400,0"@0,0 1`` without swallowing
the next. Errors are mapped by their ``VBOX_E_*``/``NS_ERROR_*`` code and the exact form of the
message. ``connect`` refuses an install whose ``VBoxManage --version`` warns that the vboxdrv
kernel module is not loaded (``BackendUnavailable``: VirtualBox is not properly set up).

The base image is attached with ``--mtype multiattach``, so each machine writes to its own
differencing image in its folder and the base is never copied or written. ``overlay=False``
attaches the image itself (it is detached before the machine is deleted, so destroy never
deletes it). VirtualBox cannot boot a kernel directly: specs with ``kernel`` raise Unsupported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option

__all__ = ["provider"]


class _Provider(BackendProvider):
    name = "virtualbox"
    description = "Oracle VirtualBox 7 via VBoxManage (or the SDK's vboxapi bindings)"
    options = (
        Option("vboxmanage", (str, os.PathLike), None, "the VBoxManage executable"),
        Option("transport", str, "auto", '"auto", "vboxmanage" or "vboxapi"'),
        Option("base_folder", (str, os.PathLike), None, "where VM folders go"),
        Option("timeout", float, 120, "seconds allowed per VBoxManage call"),
        Option("retries", int, 5, "retries of a transient lock error"),
        Option("retry_delay", float, 0.5, "seconds before the first retry (doubling)"),
        Option("settle_timeout", float, 60, "how long a state read waits for a transitional state"),
        Option("env", dict, None, "extra environment variables for VBoxManage"),
    )

    def unavailable(self) -> tuple[str, str | None] | None:
        from ._vboxmanage import find_vboxmanage

        if find_vboxmanage() is not None:
            return None
        try:
            if importlib.util.find_spec("vboxapi") is not None:
                return None
        except (ImportError, ValueError):
            pass
        return (
            "neither VBoxManage nor the vboxapi module was found",
            "VirtualBox 7 from https://www.virtualbox.org (or pass vboxmanage=PATH)",
        )

    def checks_availability_itself(self, options: Mapping[str, Any]) -> bool:
        return options.get("vboxmanage") is not None or options.get("transport") == "vboxapi"

    def open(self, **options: Any) -> Hypervisor:
        from ._hypervisor import open_hypervisor

        return open_hypervisor(**options)


provider = _Provider()
