"""QEMU driven directly over QMP: the embedded default backend, no daemon.

>>> import vmctl
>>> hv = vmctl.connect("qemu", state_dir="/tmp/vmctl-doctest", accel="tcg")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option

__all__ = ["provider"]


class _Provider(BackendProvider):
    name = "qemu"
    description = "QEMU over QMP, no daemon (embedded default)"
    python_modules = (("qemu.qmp", "pip install vmctl"),)
    tools = (
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("qemu-img", "apt-get install qemu-utils"),
    )
    options = (
        Option("state_dir", (str, os.PathLike), None, "where machines live (default: $VMCTL_STATE_DIR/qemu)"),
        Option("accel", str, "auto", '"kvm", "tcg", "hvf", "whpx" or "auto" (KVM if /dev/kvm is usable)'),
        Option("qemu_binary", str, "qemu-system-x86_64", "the QEMU executable"),
        Option("qemu_img", str, "qemu-img", "the qemu-img executable"),
        Option("machine_type", str, "q35", "QEMU's -machine type"),
        Option("cpu_model", str, None, "QEMU's -cpu model (default: host with KVM, max with TCG)"),
        Option("passt", str, "passt", "the guests' network without a way to host loopback (\"\": QEMU's, restricted)"),
        Option("log_max_bytes", int, 16 << 20, "cap of the serial console log and qemu.log (0: none)"),
    )

    def open(self, **options: Any) -> Hypervisor:
        from vmctl_qemu._hypervisor import QemuHypervisor

        return QemuHypervisor(**options)


provider = _Provider()
