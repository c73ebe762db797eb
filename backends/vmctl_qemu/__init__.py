"""QEMU driven directly over QMP: the embedded default backend, no daemon.

>>> import vmctl
>>> hv = vmctl.connect("qemu", state_dir="/tmp/vmctl-doctest", accel="tcg")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider

__all__ = ["provider"]


class _Provider(BackendProvider):
    name = "qemu"
    description = "QEMU over QMP, no daemon (embedded default)"
    python_modules = (("qemu.qmp", "pip install vmctl"),)
    tools = (
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("qemu-img", "apt-get install qemu-utils"),
    )

    def open(self, **options: Any) -> Hypervisor:
        from vmctl_qemu._hypervisor import QemuHypervisor

        return QemuHypervisor(**options)


provider = _Provider()
