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

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmctl.errors import BackendError, MachineExists, MachineNotFound, OperationTimeout
from vmctl.interface import Hypervisor, Machine
from vmctl.registry import BackendProvider, Option
from vmctl.types import Capabilities, MachineSpec, Snapshot, State, Usage

__all__ = ["MemoryHypervisor", "MemoryMachine", "provider"]

TICK = 0.5


@dataclass
class _Guest:
    """A simulated guest: its RAM is one counter that advances with running time."""

    counter_base: float = 0.0
    running_since: float | None = None
    power_button_presses: int = 0
    boots: int = 0
    link_up: bool = True

    def counter(self, now: float | None = None) -> int:
        extra = 0.0
        if self.running_since is not None:
            extra = ((now or time.monotonic()) - self.running_since) / TICK
        return int(self.counter_base + extra)

    def freeze(self) -> None:
        if self.running_since is not None:
            self.counter_base = self.counter_base + (time.monotonic() - self.running_since) / TICK
            self.running_since = None

    def thaw(self) -> None:
        if self.running_since is None:
            self.running_since = time.monotonic()


@dataclass
class _Record:
    spec: MachineSpec
    state: State = State.STOPPED
    guest: _Guest = field(default_factory=_Guest)
    saved: _Guest | None = None
    snapshots: dict[str, tuple[Snapshot, _Guest | None]] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    cpu_since: float | None = None
    cpu_limit: int = 100
    pid: int | None = None
    created: float = field(default_factory=time.time)
    #: Seconds the guest takes to honour the power button; None = it ignores the button.
    shutdown_delay: float | None = 0.2
    shutdown_at: float | None = None


_NAMESPACES: dict[str, dict[str, _Record]] = {}
_LOCK = threading.RLock()
_PIDS = iter(range(40000, 1 << 30))


class MemoryMachine(Machine):
    hypervisor: MemoryHypervisor

    def _rec(self) -> _Record:
        rec = self.hypervisor._machines.get(self.name)
        if rec is None:
            raise MachineNotFound(self.name, "memory")
        self._settle(rec)
        return rec

    @staticmethod
    def _settle(rec: _Record) -> None:
        if rec.shutdown_at is not None and time.monotonic() >= rec.shutdown_at and rec.state is State.RUNNING:
            MemoryMachine._halt(rec)

    @staticmethod
    def _halt(rec: _Record) -> None:
        rec.guest.freeze()
        if rec.cpu_since is not None:
            rec.cpu_seconds += time.monotonic() - rec.cpu_since
        rec.cpu_since = None
        rec.state = State.STOPPED
        rec.pid = None
        rec.shutdown_at = None

    @contextlib.contextmanager
    def _exclusive(self, verb: str, timeout: float) -> Iterator[None]:
        """The namespace's lock (machines live in this process only; every verb is instant)."""
        if not _LOCK.acquire(timeout=max(timeout, 0.0)):
            raise OperationTimeout(f"lock on machine {self.name!r}", timeout)
        try:
            self._rec()
            yield
        finally:
            _LOCK.release()

    @property
    def spec(self) -> MachineSpec:
        with _LOCK:
            return self._rec().spec

    def _get_state(self) -> State:
        with _LOCK:
            return self._rec().state

    def _get_pid(self) -> int | None:
        with _LOCK:
            return self._rec().pid

    def _run(self, rec: _Record) -> None:
        rec.state = State.RUNNING
        rec.guest.thaw()
        rec.cpu_since = time.monotonic()

    def _do_start(self, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            if rec.state is State.SUSPENDED and rec.saved is not None:
                rec.guest, rec.saved = rec.saved, None
            else:
                rec.guest = _Guest(boots=rec.guest.boots + 1, power_button_presses=rec.guest.power_button_presses)
                rec.cpu_seconds = 0.0
            rec.pid = next(_PIDS)
            self._run(rec)

    def _do_pause(self, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            rec.guest.freeze()
            if rec.cpu_since is not None:
                rec.cpu_seconds += time.monotonic() - rec.cpu_since
            rec.cpu_since = None
            rec.state = State.PAUSED

    def _do_resume(self, timeout: float) -> None:
        with _LOCK:
            self._run(self._rec())

    def _do_suspend(self, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.saved = rec.guest
            rec.state = State.SUSPENDED

    def _do_request_shutdown(self) -> None:
        with _LOCK:
            rec = self._rec()
            rec.guest.power_button_presses += 1
            if rec.shutdown_delay is not None:
                rec.shutdown_at = time.monotonic() + rec.shutdown_delay

    def _do_poweroff(self, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.saved = None

    def _do_reset(self, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            rec.guest = _Guest(boots=rec.guest.boots + 1, power_button_presses=rec.guest.power_button_presses)
            rec.guest.thaw()

    def _do_reboot(self, timeout: float) -> bool:
        with _LOCK:
            rec = self._rec()
            rec.guest.power_button_presses += 1
            if rec.shutdown_delay is None or rec.shutdown_delay > timeout:
                return False
        self._do_reset(timeout)
        return True

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        with _LOCK:
            rec = self._rec()
            live = rec.state is not State.STOPPED
            guest: _Guest | None = None
            if live:
                rec.guest.freeze()
                guest = _Guest(rec.guest.counter_base, None, rec.guest.power_button_presses, rec.guest.boots)
                if rec.state is State.RUNNING:
                    rec.guest.thaw()
            parent = list(rec.snapshots)[-1] if rec.snapshots else None
            snap = Snapshot(name=name, created=time.time(), has_memory=live, description=description, parent=parent)
            rec.snapshots[name] = (snap, guest)
            return snap

    def _do_snapshots(self) -> list[Snapshot]:
        with _LOCK:
            return [s for s, _ in self._rec().snapshots.values()]

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        with _LOCK:
            rec = self._rec()
            _, guest = rec.snapshots[snapshot.name]
            if rec.state in (State.RUNNING, State.PAUSED):
                self._halt(rec)
            rec.saved = None
            rec.state = State.STOPPED
            if guest is not None:
                rec.guest = _Guest(guest.counter_base, None, guest.power_button_presses, guest.boots)
                rec.pid = next(_PIDS)
                rec.cpu_seconds = 0.0
                self._run(rec)

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        with _LOCK:
            del self._rec().snapshots[name]

    def _do_usage(self) -> Usage:
        with _LOCK:
            rec = self._rec()
            if rec.state not in (State.RUNNING, State.PAUSED):
                return Usage(machine=self.name)
            cpu = rec.cpu_seconds
            if rec.cpu_since is not None:
                cpu += (time.monotonic() - rec.cpu_since) * rec.cpu_limit / 100
            return Usage(machine=self.name, cpu_seconds=cpu, memory_bytes=rec.spec.memory_mib << 20)

    def _do_set_network(self, enabled: bool) -> None:
        with _LOCK:
            self._rec().guest.link_up = enabled

    def _do_set_cpu_limit(self, percent: int) -> None:
        with _LOCK:
            self._rec().cpu_limit = percent

    def _do_destroy(self, timeout: float) -> None:
        with _LOCK:
            self._rec()
            del self.hypervisor._machines[self.name]

    # -- for tests: the simulated guest ------------------------------------------------------
    def guest_counter(self) -> int:
        with _LOCK:
            return self._rec().guest.counter()

    def guest_power_button_presses(self) -> int:
        with _LOCK:
            return self._rec().guest.power_button_presses

    def guest_boots(self) -> int:
        with _LOCK:
            return self._rec().guest.boots

    def guest_link_up(self) -> bool:
        with _LOCK:
            return self._rec().guest.link_up

    def set_guest_ignores_power_button(self, ignore: bool = True) -> None:
        with _LOCK:
            self._rec().shutdown_delay = None if ignore else 0.2

    def crash(self) -> None:
        """Simulate the hypervisor process dying."""
        with _LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.state = State.CRASHED


class MemoryHypervisor(Hypervisor):
    name = "memory"

    def __init__(self, namespace: str = "default") -> None:
        if not isinstance(namespace, str):
            raise BackendError(f"namespace must be a string, not {namespace!r}")
        with _LOCK:
            self._machines = _NAMESPACES.setdefault(namespace, {})
        self.namespace = namespace

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(cpu_limit=True, usage_fields=frozenset({"cpu_seconds", "memory_bytes"}))

    def _do_create(self, spec: MachineSpec) -> Machine:
        with _LOCK:
            if spec.name in self._machines:
                raise MachineExists(spec.name, "memory")
            self._machines[spec.name] = _Record(spec=spec)
        return MemoryMachine(self, spec.name)

    def _machine_names(self) -> list[str]:
        with _LOCK:
            return list(self._machines)

    def _open_machine(self, name: str) -> Machine:
        with _LOCK:
            if name not in self._machines:
                raise MachineNotFound(name, "memory")
        return MemoryMachine(self, name)


class _Provider(BackendProvider):
    name = "memory"
    description = "in-process reference implementation (no hypervisor)"
    options = (Option("namespace", str, "default", "machines with the same namespace are shared in the process"),)

    def open(self, **options: Any) -> Hypervisor:
        return MemoryHypervisor(**options)


provider = _Provider()
