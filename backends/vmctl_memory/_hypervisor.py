"""The memory backend's connection: one process-wide namespace of machines."""

from __future__ import annotations

from vmctl.errors import BackendError, MachineExists, MachineNotFound
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, MachineSpec

from ._guest import LOCK, NAMESPACES, Record
from ._machine import MemoryMachine

__all__ = ["MemoryHypervisor"]


class MemoryHypervisor(Hypervisor):
    name = "memory"

    def __init__(self, namespace: str = "default") -> None:
        if not isinstance(namespace, str):
            raise BackendError(f"namespace must be a string, not {namespace!r}")
        with LOCK:
            self._machines = NAMESPACES.setdefault(namespace, {})
        self.namespace = namespace

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            cpu_limit=True, usage_fields=frozenset({"cpu_seconds", "memory_bytes"}), disk_usage=True, screenshot=True
        )

    def _do_create(self, spec: MachineSpec) -> Machine:
        with LOCK:
            if spec.name in self._machines:
                raise MachineExists(spec.name, "memory")
            self._machines[spec.name] = Record(spec=spec)
        return MemoryMachine(self, spec.name)

    def _machine_names(self) -> list[str]:
        with LOCK:
            return list(self._machines)

    def _open_machine(self, name: str) -> Machine:
        with LOCK:
            if name not in self._machines:
                raise MachineNotFound(name, "memory")
        return MemoryMachine(self, name)
