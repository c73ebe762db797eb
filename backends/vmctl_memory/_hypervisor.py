"""The memory backend's connection: one process-wide namespace of machines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        # the extra media are kept in the spec (there is no guest to show them to)
        return Capabilities(
            cpu_limit=True,
            usage_fields=frozenset({"cpu_seconds", "memory_bytes"}),
            disk_usage=True,
            screenshot=True,
            cdrom=True,
            extra_disks=True,
            floppy=True,
        )

    def _do_create(self, spec: MachineSpec) -> Machine:
        with LOCK:
            if spec.name in self._machines:
                raise MachineExists(spec.name, "memory")
            self._machines[spec.name] = Record(spec=spec)
        return MemoryMachine(self, spec.name)

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        """The appliance is read and checked as on every backend (an OVA unpacked into a temporary
        directory and its manifest verified); nothing runs here, so the machine's disk is the
        file vmctl was given: the disk beside an ``.ovf``, the ``.ova`` itself."""
        from vmctl.appliance import open_appliance
        from vmctl.backend.appliance import appliance_name, appliance_spec

        with open_appliance(path) as opened:
            app = opened.appliance
            chosen = appliance_name(app, name)
            disk = opened.source if opened.packaged or not app.disks else opened.disk_paths[app.disks[0].disk_id]
            return self.create(appliance_spec(opened, chosen, disk, spec))

    def _machine_names(self) -> list[str]:
        with LOCK:
            return list(self._machines)

    def _open_machine(self, name: str) -> Machine:
        with LOCK:
            if name not in self._machines:
                raise MachineNotFound(name, "memory")
        return MemoryMachine(self, name)
