"""vmctl-example: a toy in-process vmctl backend, registered as ``example``.

>>> import vmctl
>>> hv = vmctl.connect("example")
>>> hv.capabilities.pause
False
"""

from __future__ import annotations

from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider

__all__ = ["provider"]


class _Provider(BackendProvider):
    name = "example"
    description = "a toy in-process backend living outside vmctl (an example for backend authors)"

    def open(self, **options: Any) -> Hypervisor:
        from vmctl_example._backend import ExampleHypervisor

        return ExampleHypervisor(**options)


provider = _Provider()
