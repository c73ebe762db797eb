"""What vcsim cannot exercise: usage totals over real-time and historical samples, and the
graceful reboot's wait for VMware Tools. The machine's server calls are replaced by fakes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from vmctl_vsphere._machine import VSphereMachine

UTC = datetime.UTC
COUNTERS = {
    "cpu.used.summation": 1,
    "disk.read.average": 2,
    "disk.write.average": 3,
    "net.received.average": 4,
    "net.transmitted.average": 5,
    "mem.consumed.average": 6,
}


class FakeHypervisor:
    name = "vsphere"

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters

    def perf_counters(self) -> dict[str, int]:
        return self.counters


def machine(counters: dict[str, int] = COUNTERS) -> VSphereMachine:
    vm = object.__new__(VSphereMachine)
    vm.name = "m"
    vm.hypervisor = FakeHypervisor(counters)  # type: ignore[assignment]
    return vm


def samples(end: datetime.datetime, interval: int, values: list[int]) -> list[tuple[datetime.datetime, int]]:
    """Newest first, as vSphere returns them."""
    return [(end - datetime.timedelta(seconds=interval * i), v) for i, v in enumerate(values)]


def test_totals_of_a_recent_boot_come_from_real_time_samples() -> None:
    vm = machine()
    now = datetime.datetime.now(UTC)
    boot = now - datetime.timedelta(seconds=65)
    queries: list[tuple[int, datetime.datetime]] = []

    def query(counters: dict[str, int], interval: int, start: datetime.datetime, end: Any, count: int) -> Any:
        queries.append((interval, start))
        stamps = [t for t, _ in samples(now, 20, [0, 0, 0])]
        series = {name: samples(now, 20, [1000, 2000, 3000]) for name in counters}
        series["mem.consumed.average"] = samples(now, 20, [512, 256, 128])
        return series, stamps

    vm._query = query  # type: ignore[method-assign]
    totals, latest = vm._perf(boot)
    assert [q[0] for q in queries] == [20] and queries[0][1] == boot
    assert totals["cpu_seconds"] == 6.0  # ms used per sample
    assert totals["disk_read_bytes"] == 6000 * 1024 * 20  # KB/s over 20 s samples
    assert latest["mem.consumed.average"] == 512  # the newest sample


def test_an_old_boot_adds_the_historical_rollups() -> None:
    vm = machine()
    now = datetime.datetime.now(UTC)
    boot = now - datetime.timedelta(hours=3)
    asked: list[int] = []

    def query(counters: dict[str, int], interval: int, start: datetime.datetime, end: Any, count: int) -> Any:
        asked.append(interval)
        if interval == 20:
            values = [1000] * 180
            return {n: samples(now, 20, values) for n in counters}, [t for t, _ in samples(now, 20, values)]
        assert start == boot and end is not None and count >= 24
        values = [60000] * 24
        return {"cpu.used.summation": samples(end, 300, values)}, [t for t, _ in samples(end, 300, values)]

    vm._query = query  # type: ignore[method-assign]
    totals, _ = vm._perf(boot)
    assert asked == [20, 300]
    assert totals["cpu_seconds"] == 180 * 1.0 + 24 * 60.0
    # disk and net are not kept in the 5-minute rollups at this statistics level: unknown, not low
    assert totals["disk_read_bytes"] is None and totals["net_rx_bytes"] is None


def test_counters_the_server_lacks_are_none() -> None:
    vm = machine({"cpu.used.summation": 1})
    now = datetime.datetime.now(UTC)

    def query(counters: dict[str, int], interval: int, start: datetime.datetime, end: Any, count: int) -> Any:
        assert set(counters) == {"cpu.used.summation"}
        return {"cpu.used.summation": samples(now, 20, [500])}, [now]

    vm._query = query  # type: ignore[method-assign]
    totals, latest = vm._perf(now - datetime.timedelta(seconds=10))
    assert totals["cpu_seconds"] == 0.5 and totals["net_tx_bytes"] is None and latest["mem.consumed.average"] is None


# -- graceful reboot --------------------------------------------------------------------------
def rebooting(statuses: list[str]) -> tuple[VSphereMachine, list[str]]:
    vm = machine()
    calls: list[str] = []
    queue = list(statuses)

    def props(paths: list[str]) -> dict[str, Any]:
        return {"guest.toolsRunningStatus": queue.pop(0) if len(queue) > 1 else queue[0]}

    vm._props = props  # type: ignore[method-assign]
    vm._call = lambda verb, call, snapshot=None: calls.append(verb)  # type: ignore[method-assign]
    return vm, calls


def test_reboot_waits_for_tools_to_go_and_come_back() -> None:
    vm, calls = rebooting(["guestToolsRunning", "guestToolsRunning", "guestToolsNotRunning", "guestToolsRunning"])
    assert vm._do_reboot(10) is True
    assert calls == ["restart"]


def test_reboot_not_seen_by_the_deadline_is_false() -> None:
    vm, calls = rebooting(["guestToolsRunning"])
    assert vm._do_reboot(0.6) is False
    assert calls == ["restart"]


def test_reboot_without_tools_sends_nothing() -> None:
    from vmctl_vsphere import ToolsUnavailable

    vm, calls = rebooting(["guestToolsNotInstalled"])
    with pytest.raises(ToolsUnavailable):
        vm._do_reboot(1)
    assert calls == []
