"""What the host must have before the task's VM can run, said so the volunteer can act on it.

At start the adapter checks what the job's backend needs: for QEMU the QEMU binaries and, when
the profile asks for ``accel="kvm"``, a ``/dev/kvm`` the client's user may open; for the other
backends their provider's own probe (VirtualBox's VBoxManage, ...); for every backend enough
available memory for a VM that is not already running. A missing piece is a
:class:`HostNotReady`: the adapter makes it a temporary exit with the notice flag, so the BOINC
Manager shows the volunteer the message (what to install, which group to join) instead of a
stack trace in stderr.txt, and the client retries the task after the delay.

>>> problems = missing_tools("qemu", {"qemu_binary": "no-such-qemu-binary"})
>>> print(problems[0])  # doctest: +NORMALIZE_WHITESPACE
QEMU (no-such-qemu-binary) is not installed: on Debian/Ubuntu apt-get install qemu-system-x86,
on Fedora dnf install qemu-system-x86-core
"""

from __future__ import annotations

import fcntl
import grp
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Mapping
from typing import Any

import psutil

import vmctl
from vmctl.registry import get_provider

__all__ = [
    "ERR_EXEC",
    "MEMORY_HEADROOM_MIB",
    "MISSING_MEMORY_DELAY",
    "MISSING_SOFTWARE_DELAY",
    "AccelerationMissing",
    "HostNotReady",
    "acceleration_report",
    "check_memory",
    "check_tools",
    "choose_acceleration",
    "missing_tools",
]

MISSING_SOFTWARE_DELAY = 3600.0
"""Seconds before the client retries a task whose host lacks software or a permission."""
MISSING_MEMORY_DELAY = 300.0
"""Seconds before the client retries a task whose VM does not fit in the available memory."""
MEMORY_HEADROOM_MIB = 64
"""What the hypervisor process needs beside the guest's RAM."""

log = logging.getLogger("vmctl.boinc")

KVM_DEVICE = "/dev/kvm"
_KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
ERR_EXEC = -148
"""BOINC's ERR_EXEC (lib/error_numbers.h): vboxwrapper's exit status when the VM needs hardware
virtualization the host lacks."""
_QEMU_PACKAGES = {
    "qemu-system-x86_64": ("qemu-system-x86", "qemu-system-x86-core"),
    "qemu-img": ("qemu-utils", "qemu-img"),
}


class AccelerationMissing(Exception):
    """The job needs hardware virtualization and this host cannot give it."""


class HostNotReady(Exception):
    """The host lacks what the backend needs; retried after ``delay`` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


def _found(tool: str) -> bool:
    if os.sep in tool:
        return os.path.isfile(tool) and os.access(tool, os.X_OK)
    return shutil.which(tool) is not None


def _install_hint(tool: str, default: str) -> str:
    debian, fedora = _QEMU_PACKAGES.get(os.path.basename(default), (None, None))
    if debian is None:
        return f"install {tool}"
    return f"on Debian/Ubuntu apt-get install {debian}, on Fedora dnf install {fedora}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _kvm_problem() -> str | None:
    try:
        st = os.stat(KVM_DEVICE)
    except OSError:
        return (
            f"KVM is not available ({KVM_DEVICE} is missing): enable virtualization (VT-x/AMD-V) in the "
            "firmware and load the kvm_intel or kvm_amd module"
        )
    if not stat.S_ISCHR(st.st_mode):
        return f"{KVM_DEVICE} is not a device"
    if os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return None
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    user = _user()
    return (
        f"the user {user} may not use {KVM_DEVICE}: add it to the {group} group "
        f"(sudo usermod -aG {group} {user}) and restart the BOINC client"
    )


def missing_tools(backend: str, options: Mapping[str, Any]) -> list[str]:
    """What the host lacks for ``backend`` with the profile's ``options``, each with its remedy."""
    if backend != "qemu":
        try:
            provider = get_provider(backend)
        except vmctl.BackendUnavailable as exc:
            return [f"the {backend} backend cannot run here: {exc.reason}"]
        # Options that name the backend's tool (vboxmanage=PATH) are checked when it connects.
        problem = None if provider.checks_availability_itself(options) else provider.unavailable()
        if problem is None:
            return []
        reason, hint = problem
        return [f"the {backend} backend cannot run here: {reason}" + (f": {hint}" if hint else "")]
    problems = []
    for option, default, what in (
        ("qemu_binary", "qemu-system-x86_64", "QEMU"),
        ("qemu_img", "qemu-img", "qemu-img"),
    ):
        tool = str(options.get(option) or default)
        if not _found(tool):
            problems.append(f"{what} ({tool}) is not installed: {_install_hint(tool, default)}")
    if options.get("accel") == "kvm":
        kvm = _kvm_problem()
        if kvm is not None:
            problems.append(kvm)
    return problems


def check_tools(backend: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`HostNotReady` naming everything ``backend`` lacks here."""
    problems = missing_tools(backend, options)
    if problems:
        raise HostNotReady("; ".join(problems), MISSING_SOFTWARE_DELAY)


def check_memory(memory_mib: int) -> None:
    """Raise :class:`HostNotReady` if a VM of ``memory_mib`` does not fit in available memory."""
    available = psutil.virtual_memory().available // (1 << 20)
    needed = memory_mib + MEMORY_HEADROOM_MIB
    if available < needed:
        raise HostNotReady(
            f"not enough free memory for the VM: it needs {needed} MiB, {available} MiB are available",
            MISSING_MEMORY_DELAY,
        )


def _kvm_unusable() -> str | None:
    """Why KVM cannot run a VM here (missing, not permitted, or refusing to create one), or None."""
    problem = _kvm_problem()
    if problem is not None:
        return problem
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {KVM_DEVICE}: {exc.strerror}"
    try:
        os.close(fcntl.ioctl(fd, _KVM_CREATE_VM, 0))
    except OSError as exc:
        return (
            f"KVM cannot create a VM ({exc.strerror}): hardware virtualization (VT-x/AMD-V) is disabled "
            "in the firmware or held by another hypervisor"
        )
    finally:
        os.close(fd)
    return None


def choose_acceleration(
    backend: str, options: Mapping[str, Any], needed: bool, extensions_disabled: bool
) -> str | None:
    """The accelerator a QEMU task runs with when its profile says ``auto`` (None: as the
    profile says). Where hardware virtualization is unusable (or the client says it failed before:
    ``vm_extensions_disabled``), a job that needs it raises :class:`AccelerationMissing`, and any
    other job runs under TCG, said in stderr.txt (never a silent 10-50x slowdown)."""
    if backend != "qemu":
        return None
    accel = options.get("accel", "auto")
    if accel not in ("auto", "kvm"):
        if needed:
            log.warning("the job asks for hardware virtualization; the host's profile runs it with accel=%s", accel)
        return None
    if extensions_disabled:
        problem: str | None = (
            "the BOINC client reports that hardware virtualization failed on this host before "
            "(vm_extensions_disabled in init_data.xml)"
        )
    else:
        problem = _kvm_unusable()
    if problem is None:
        return None
    if needed:
        raise AccelerationMissing(problem)
    if accel == "kvm":
        return None  # the profile insists: check_tools says what is missing
    log.warning("hardware virtualization is not usable (%s): the VM runs under TCG, 10-50 times slower", problem)
    return "tcg"


def acceleration_report(problem: str) -> str:
    """What vboxwrapper writes to stderr.txt when the VM needs hardware virtualization the host
    lacks; the client reads ``ERR_CPU_VM_EXTENSIONS_DISABLED`` from it (app_control.cpp) and flags
    the host (``p_vm_extensions_disabled``), so the scheduler stops sending it VM work."""
    return (
        f"the job needs hardware virtualization for its VM, and this host cannot give it: {problem}. "
        "Enable VT-x (Intel) or AMD-V (AMD) in the computer's firmware (BIOS/UEFI). "
        "Error Code: ERR_CPU_VM_EXTENSIONS_DISABLED"
    )
