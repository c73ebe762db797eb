"""The memory backend's machines: records in process-wide namespaces, each with a simulated guest."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from vmctl.types import MachineSpec, Snapshot, State

__all__ = ["LOCK", "NAMESPACES", "PIDS", "TICK", "Guest", "Record"]

TICK = 0.5


@dataclass
class Guest:
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
class Record:
    spec: MachineSpec
    state: State = State.STOPPED
    guest: Guest = field(default_factory=Guest)
    saved: Guest | None = None
    snapshots: dict[str, tuple[Snapshot, Guest | None]] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    cpu_since: float | None = None
    cpu_limit: int = 100
    pid: int | None = None
    created: float = field(default_factory=time.time)
    #: Seconds the guest takes to honour the power button; None = it ignores the button.
    shutdown_delay: float | None = 0.2
    shutdown_at: float | None = None


NAMESPACES: dict[str, dict[str, Record]] = {}
LOCK = threading.RLock()
PIDS = iter(range(40000, 1 << 30))
