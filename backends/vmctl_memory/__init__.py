"""The in-memory reference backend: every verb, no hypervisor.

Machines live in a process-wide namespace, like fsspec's memory filesystem. Their "guest" is a
simulated counter that advances every 0.5 s of RUNNING time, is saved in snapshots and in
suspended state, and sees the power button. Use it to learn the API, to test code written
against vmctl, and as the model the contract suite holds real backends to.

>>> import pathlib, tempfile, vmctl
>>> disk = pathlib.Path(tempfile.mkdtemp()) / "base.img"
>>> _ = disk.write_bytes(b"")
>>> hv = vmctl.connect("memory", namespace="doctest")
>>> vm = hv.create(vmctl.MachineSpec(name="m1", disk=disk))
>>> vm.start(); vm.suspend(); vm.state
<State.SUSPENDED: 'suspended'>
>>> vm.destroy(); hv.machines()
[]
"""

from __future__ import annotations

from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option

from ._hypervisor import MemoryHypervisor
from ._machine import MemoryMachine

__all__ = ["MemoryHypervisor", "MemoryMachine", "provider"]


class _Provider(BackendProvider):
    name = "memory"
    description = "in-process reference implementation (no hypervisor)"
    options = (Option("namespace", str, "default", "machines with the same namespace are shared in the process"),)

    def open(self, **options: Any) -> Hypervisor:
        return MemoryHypervisor(**options)


provider = _Provider()
