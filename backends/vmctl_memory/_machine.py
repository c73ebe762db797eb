"""One machine of the memory backend: every verb, on a record and its simulated guest."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vmctl.errors import MachineNotFound, OperationTimeout
from vmctl.interface import Machine
from vmctl.screenshot import encode_png
from vmctl.types import DiskUsage, MachineSpec, Snapshot, State, Usage

from ._guest import LOCK, PIDS, Guest, Record

if TYPE_CHECKING:
    from ._hypervisor import MemoryHypervisor

__all__ = ["MemoryMachine"]


SCREEN_WIDTH, SCREEN_HEIGHT = 320, 200


def guest_screen(counter: int, boots: int) -> bytes:
    """The simulated guest's screen: dark blue, with one bar per boot (up to 8) and a bar as long
    as its counter (modulo the width), so that two screenshots show the guest moved on."""
    background, bar = b"\x00\x00\xaa", b"\xff\xff\x55"
    rows = []
    for y in range(SCREEN_HEIGHT):
        if 10 <= y < 20:
            length = (counter * 4) % SCREEN_WIDTH
        elif 30 <= y < 110 and (y - 30) % 10 < 6 and (y - 30) // 10 < boots:
            length = 40
        else:
            length = 0
        rows.append(bar * length + background * (SCREEN_WIDTH - length))
    return encode_png(SCREEN_WIDTH, SCREEN_HEIGHT, b"".join(rows))


class MemoryMachine(Machine):
    hypervisor: MemoryHypervisor

    def _rec(self) -> Record:
        rec = self.hypervisor._machines.get(self.name)
        if rec is None:
            raise MachineNotFound(self.name, "memory")
        self._settle(rec)
        return rec

    @staticmethod
    def _settle(rec: Record) -> None:
        if rec.shutdown_at is not None and time.monotonic() >= rec.shutdown_at and rec.state is State.RUNNING:
            MemoryMachine._halt(rec)

    @staticmethod
    def _halt(rec: Record) -> None:
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
        if not LOCK.acquire(timeout=max(timeout, 0.0)):
            raise OperationTimeout(f"lock on machine {self.name!r}", timeout)
        try:
            self._rec()
            yield
        finally:
            LOCK.release()

    @property
    def spec(self) -> MachineSpec:
        with LOCK:
            return self._rec().spec

    def _get_state(self) -> State:
        with LOCK:
            return self._rec().state

    def _get_pid(self) -> int | None:
        with LOCK:
            return self._rec().pid

    def _run(self, rec: Record) -> None:
        rec.state = State.RUNNING
        rec.guest.thaw()
        rec.cpu_since = time.monotonic()

    def _do_start(self, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            if rec.state is State.SUSPENDED and rec.saved is not None:
                rec.guest, rec.saved = rec.saved, None
            else:
                rec.guest = Guest(boots=rec.guest.boots + 1, power_button_presses=rec.guest.power_button_presses)
                rec.cpu_seconds = 0.0
            rec.pid = next(PIDS)
            self._run(rec)

    def _do_pause(self, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            rec.guest.freeze()
            if rec.cpu_since is not None:
                rec.cpu_seconds += time.monotonic() - rec.cpu_since
            rec.cpu_since = None
            rec.state = State.PAUSED

    def _do_resume(self, timeout: float) -> None:
        with LOCK:
            self._run(self._rec())

    def _do_suspend(self, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.saved = rec.guest
            rec.state = State.SUSPENDED

    def _do_request_shutdown(self) -> None:
        with LOCK:
            rec = self._rec()
            rec.guest.power_button_presses += 1
            if rec.shutdown_delay is not None:
                rec.shutdown_at = time.monotonic() + rec.shutdown_delay

    def _do_poweroff(self, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.saved = None

    def _do_reset(self, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            rec.guest = Guest(boots=rec.guest.boots + 1, power_button_presses=rec.guest.power_button_presses)
            rec.guest.thaw()

    def _do_reboot(self, timeout: float) -> bool:
        with LOCK:
            rec = self._rec()
            rec.guest.power_button_presses += 1
            if rec.shutdown_delay is None or rec.shutdown_delay > timeout:
                return False
        self._do_reset(timeout)
        return True

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        with LOCK:
            rec = self._rec()
            live = rec.state is not State.STOPPED
            guest: Guest | None = None
            if live:
                rec.guest.freeze()
                guest = Guest(rec.guest.counter_base, None, rec.guest.power_button_presses, rec.guest.boots)
                if rec.state is State.RUNNING:
                    rec.guest.thaw()
            parent = list(rec.snapshots)[-1] if rec.snapshots else None
            snap = Snapshot(name=name, created=time.time(), has_memory=live, description=description, parent=parent)
            rec.snapshots[name] = (snap, guest)
            return snap

    def _do_snapshots(self) -> list[Snapshot]:
        with LOCK:
            return [s for s, _ in self._rec().snapshots.values()]

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        with LOCK:
            rec = self._rec()
            _, guest = rec.snapshots[snapshot.name]
            if rec.state in (State.RUNNING, State.PAUSED):
                self._halt(rec)
            rec.saved = None
            rec.state = State.STOPPED
            if guest is not None:
                rec.guest = Guest(guest.counter_base, None, guest.power_button_presses, guest.boots)
                rec.pid = next(PIDS)
                rec.cpu_seconds = 0.0
                self._run(rec)

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        with LOCK:
            del self._rec().snapshots[name]

    def _do_disk_usage(self) -> DiskUsage:
        return DiskUsage(self.name, 0)  # the machine lives in this process's memory: no file

    def _do_usage(self) -> Usage:
        with LOCK:
            rec = self._rec()
            if rec.state not in (State.RUNNING, State.PAUSED):
                return Usage(machine=self.name)
            cpu = rec.cpu_seconds
            if rec.cpu_since is not None:
                cpu += (time.monotonic() - rec.cpu_since) * rec.cpu_limit / 100
            return Usage(machine=self.name, cpu_seconds=cpu, memory_bytes=rec.spec.memory_mib << 20)

    def _do_screenshot(self, timeout: float) -> bytes:
        with LOCK:
            rec = self._rec()
            counter, boots = rec.guest.counter(), rec.guest.boots
        return guest_screen(counter, boots)

    def _do_set_network(self, enabled: bool) -> None:
        with LOCK:
            self._rec().guest.link_up = enabled

    def _do_set_cpu_limit(self, percent: int) -> None:
        with LOCK:
            self._rec().cpu_limit = percent

    def _do_destroy(self, timeout: float) -> None:
        with LOCK:
            self._rec()
            del self.hypervisor._machines[self.name]

    # -- for tests: the simulated guest ------------------------------------------------------
    def guest_counter(self) -> int:
        with LOCK:
            return self._rec().guest.counter()

    def guest_power_button_presses(self) -> int:
        with LOCK:
            return self._rec().guest.power_button_presses

    def guest_boots(self) -> int:
        with LOCK:
            return self._rec().guest.boots

    def guest_link_up(self) -> bool:
        with LOCK:
            return self._rec().guest.link_up

    def set_guest_ignores_power_button(self, ignore: bool = True) -> None:
        with LOCK:
            self._rec().shutdown_delay = None if ignore else 0.2

    def crash(self) -> None:
        """Simulate the hypervisor process dying."""
        with LOCK:
            rec = self._rec()
            self._halt(rec)
            rec.state = State.CRASHED
