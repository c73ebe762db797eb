"""The example backend: machines that live in the connection, each with a toy guest.

The guest boots when the machine starts, counts ten ticks a second while it runs, and shuts down
0.2 s after it sees the power button (unless it was told to ignore the button). Pause, suspend,
snapshots and the network link are not offered: the capabilities say so, and vmctl's verbs then
raise ``Unsupported`` without calling this code.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from vmctl.errors import MachineExists, MachineNotFound, OperationTimeout
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, DiskUsage, MachineSpec, State

__all__ = ["ExampleHypervisor", "ExampleMachine"]

TICKS_PER_SECOND = 10
SHUTDOWN_SECONDS = 0.2
_PIDS = itertools.count(70000)


@dataclass
class _Guest:
    """What runs inside one machine. Times are ``time.monotonic()`` values."""

    booted_at: float | None = None
    halts_at: float | None = None
    ticks: int = 0
    boots: int = 0
    presses: int = 0
    ignores_power_button: bool = False

    def halted(self, now: float) -> bool:
        return self.halts_at is not None and now >= self.halts_at

    def counter(self, now: float) -> int:
        if self.booted_at is None:
            return self.ticks
        end = min(now, self.halts_at) if self.halts_at is not None else now
        return int((end - self.booted_at) * TICKS_PER_SECOND)

    def boot(self, now: float) -> None:
        self.booted_at, self.halts_at, self.boots = now, None, self.boots + 1

    def stop(self, now: float) -> None:
        self.ticks, self.booted_at, self.halts_at = self.counter(now), None, None


@dataclass
class _Box:
    spec: MachineSpec
    state: State = State.STOPPED
    pid: int | None = None
    guest: _Guest | None = None

    def current(self, now: float) -> State:
        """The state, counting a guest that has finished shutting down as stopped (reading changes nothing)."""
        if self.state is State.RUNNING and self.guest is not None and self.guest.halted(now):
            return State.STOPPED
        return self.state


class ExampleMachine(Machine):
    hypervisor: ExampleHypervisor

    def _box(self) -> _Box:
        box = self.hypervisor._boxes.get(self.name)
        if box is None:
            raise MachineNotFound(self.name, "example")
        return box

    def _settled(self) -> _Box:
        """The box, with a guest that shut down by itself recorded as stopped (called by verbs)."""
        box = self._box()
        now = time.monotonic()
        if box.current(now) is not box.state:
            self._halt(box, State.STOPPED, now)
        return box

    @staticmethod
    def _halt(box: _Box, state: State, now: float) -> None:
        if box.guest is not None:
            box.guest.stop(now)
        box.state, box.pid = state, None

    @contextlib.contextmanager
    def _exclusive(self, verb: str, timeout: float) -> Iterator[None]:
        """One caller at a time checks the state and runs a verb (the core's exclusive section).

        Machines live in one process, so the connection's re-entrant lock is enough.
        """
        if not self.hypervisor._lock.acquire(timeout=max(timeout, 0.0)):
            raise OperationTimeout(f"{self.name}: waiting for another caller's {verb}", timeout)
        try:
            self._box()
            yield
        finally:
            self.hypervisor._lock.release()

    @property
    def spec(self) -> MachineSpec:
        with self.hypervisor._lock:
            return self._box().spec

    def _get_state(self) -> State:
        with self.hypervisor._lock:
            return self._box().current(time.monotonic())

    def _get_pid(self) -> int | None:
        with self.hypervisor._lock:
            box = self._box()
            return box.pid if box.current(time.monotonic()) is State.RUNNING else None

    def _do_start(self, timeout: float) -> None:
        with self.hypervisor._lock:
            box = self._settled()
            box.guest = box.guest or _Guest(ignores_power_button=self.name in self.hypervisor.stubborn)
            box.guest.boot(time.monotonic())
            box.state, box.pid = State.RUNNING, next(_PIDS)

    def _do_poweroff(self, timeout: float) -> None:
        with self.hypervisor._lock:
            self._halt(self._settled(), State.STOPPED, time.monotonic())

    def _do_request_shutdown(self) -> None:
        with self.hypervisor._lock:
            guest = self._settled().guest
            assert guest is not None
            guest.presses += 1
            if not guest.ignores_power_button and guest.halts_at is None:
                guest.halts_at = time.monotonic() + SHUTDOWN_SECONDS

    def _do_reset(self, timeout: float) -> None:
        with self.hypervisor._lock:
            guest = self._settled().guest
            assert guest is not None
            guest.boot(time.monotonic())

    def _do_reboot(self, timeout: float) -> bool:
        with self.hypervisor._lock:
            guest = self._settled().guest
            assert guest is not None
            guest.presses += 1
            if guest.ignores_power_button:
                return False
            guest.boot(time.monotonic())
            return True

    def _do_disk_usage(self) -> DiskUsage:
        with self.hypervisor._lock:
            self._box()
        return DiskUsage(self.name, 0)  # a toy machine keeps no file on the host

    def _do_destroy(self, timeout: float) -> None:
        with self.hypervisor._lock:
            self._box()
            del self.hypervisor._boxes[self.name]

    # -- what the harness uses to look into the toy guest and to crash it ------------------------
    def guest(self) -> _Guest:
        with self.hypervisor._lock:
            return self._box().guest or _Guest()

    def guest_counter(self) -> int:
        with self.hypervisor._lock:
            guest = self._box().guest
            return guest.counter(time.monotonic()) if guest is not None else 0

    def crash(self) -> None:
        """Make the machine crash, as a hypervisor process that died would."""
        with self.hypervisor._lock:
            self._halt(self._settled(), State.CRASHED, time.monotonic())


class ExampleHypervisor(Hypervisor):
    """One connection; its machines live as long as it does."""

    name = "example"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._boxes: dict[str, _Box] = {}
        #: names of machines whose guest will ignore the power button (for the contract's forced stop)
        self.stubborn: set[str] = set()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            pause=False,
            suspend=False,
            snapshots=False,
            live_snapshots=False,
            network_toggle=False,
            usage_fields=frozenset(),
            disk_usage=True,
        )

    def _do_create(self, spec: MachineSpec) -> Machine:
        with self._lock:
            if spec.name in self._boxes:
                raise MachineExists(spec.name, "example")
            self._boxes[spec.name] = _Box(spec)
        return ExampleMachine(self, spec.name)

    def _machine_names(self) -> list[str]:
        with self._lock:
            return list(self._boxes)

    def _open_machine(self, name: str) -> Machine:
        with self._lock:
            if name not in self._boxes:
                raise MachineNotFound(name, "example")
        return ExampleMachine(self, name)
