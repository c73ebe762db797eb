"""Fault injection on the libvirt backend: libvirtd restarted in the middle of an operation.

A real libvirtd (qemu:///system) runs one TCG test guest that ignores the ACPI power button (so a
graceful stop has to wait for its whole deadline). For each operation (suspend = managed save, a
snapshot with memory, a graceful stop's wait) the verb runs in a thread; as soon as libvirt shows
the operation in progress (its domain job, or the stop's shutdown request), libvirtd is restarted.
The verb must end promptly with success or a typed vmctl error, never hang; afterwards a fresh
look must find the machine in a true state (the state vmctl reports agrees with libvirt and with
QEMU's process), the machine must be controllable again, and nothing may be left over: no stray
domain, overlay, managed-save image or snapshot metadata.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import State

from .contract.harness import wait_until
from .contract.harness_libvirt import IGNORE_POWER_BUTTON, load_services, readable_test_guest
from .contract.serial_probe import SerialLogProbe

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

URI = "qemu:///system"
STATE_DIR = Path("/var/lib/libvirt/images/vmctl")
SAVE_DIR = Path("/var/lib/libvirt/qemu/save")
BOOT_TIMEOUT = 60
#: a verb interrupted by the restart must return within this (keepalive 5 s x 3 plus margin)
PROMPT = 30.0


@pytest.fixture(scope="module")
def guest() -> tuple[Path, Path, Path, str]:
    load_services().ensure_libvirtd()
    return readable_test_guest()


@pytest.fixture
def vm(guest: tuple[Path, Path, Path, str], tmp_path: Path) -> Iterator[vmctl.Machine]:
    kernel, initrd, disk, cmdline = guest
    name = f"fault-{time.monotonic_ns() % 10**8}"
    hv = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
    before = set(STATE_DIR.iterdir()) if STATE_DIR.exists() else set()
    machine = hv.create(
        vmctl.MachineSpec(
            name=name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=f"{cmdline} {IGNORE_POWER_BUTTON}",
            memory_mib=256,
            serial_log=tmp_path / "serial.log",
        )
    )
    try:
        yield machine
    finally:
        load_services().ensure_libvirtd()
        fresh = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
        try:
            try:
                fresh.machine(name).destroy()
            except vmctl.MachineNotFound:
                pass
            # nothing leaked: no domain, no overlay, no managed-save image
            raw = libvirt.open(URI)
            try:
                assert name not in [d.name() for d in raw.listAllDomains(0)], "stray domain"
            finally:
                raw.close()
            after = set(STATE_DIR.iterdir()) if STATE_DIR.exists() else set()
            assert not [p for p in after - before if name in p.name], "stray overlay"
            assert not list(SAVE_DIR.glob(f"{name}*")), "stray managed-save image"
        finally:
            fresh.close()
            hv.close()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a daemon thread; the dict gets "result" or "error" and "took"."""
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["result"] = fn()
        except BaseException as exc:  # reported to the test
            out["error"] = exc
        out["took"] = time.monotonic() - started

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def job_active(name: str) -> bool:
    """libvirt shows a domain job (save, snapshot, ...) for ``name`` on its own connection."""
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def busy(name: str) -> bool:
    """A job runs, or libvirt paused the domain for one (an internal snapshot pauses it)."""
    if job_active(name):
        return True
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_PAUSED)
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def restart_during(verb: Callable[[], Any], started: Callable[[], bool]) -> tuple[dict[str, Any], bool]:
    """Run ``verb`` and restart libvirtd as soon as ``started()``; return its outcome and whether
    the restart hit the verb while it was in progress."""
    services = load_services()
    thread, out = in_thread(verb)
    deadline = time.monotonic() + 20
    while not started() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    hit = thread.is_alive()
    services.restart_libvirtd()
    thread.join(PROMPT)
    assert not thread.is_alive(), f"the verb hung for more than {PROMPT} s after the libvirtd restart"
    error = out.get("error")
    assert error is None or isinstance(error, vmctl.VmctlError), f"untyped error: {error!r}"
    return out, hit


def true_state(machine: vmctl.Machine) -> State:
    """vmctl's state of ``machine`` through a new connection, checked against libvirt and QEMU."""
    fresh = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
    try:
        m = fresh.machine(machine.name)
        state = m.state
        raw = libvirt.open(URI)
        try:
            dom = raw.lookupByName(machine.name)
            active = bool(dom.isActive())
            saved = bool(dom.hasManagedSaveImage(0))
        finally:
            raw.close()
        if state in (State.RUNNING, State.PAUSED):
            assert active and m.pid is not None, (state, active)
        else:
            assert not active and m.pid is None, (state, active)
        assert saved == (state is State.SUSPENDED), (state, saved)
        return state
    finally:
        fresh.close()


def running_again(vm: vmctl.Machine, probe: SerialLogProbe) -> None:
    """Bring the machine back to RUNNING and see the guest's counter move."""
    state = vm.state
    if state is State.PAUSED:
        vm.resume()
    elif state in (State.SUSPENDED, State.STOPPED):
        vm.start()
    assert vm.state is State.RUNNING
    n = probe.counter()
    probe.wait_counter_above(n + 1, 20)


@pytest.mark.stops_libvirtd
def test_libvirtd_restart_during_save_snapshot_and_stop(vm: vmctl.Machine) -> None:
    assert vm.spec.serial_log is not None
    probe = SerialLogProbe(vm.spec.serial_log)
    vm.start()
    probe.wait_ready(BOOT_TIMEOUT)
    boots = probe.boots()
    hits: dict[str, bool] = {}
    outcomes: dict[str, str] = {}

    # 1. suspend (managed save) interrupted
    out, hits["suspend"] = restart_during(lambda: vm.suspend(), lambda: job_active(vm.name))
    state = true_state(vm)
    outcomes["suspend"] = f"{out.get('error') or 'ok'} -> {state.value}"
    if "error" not in out:
        assert state is State.SUSPENDED
    else:
        assert state in (State.RUNNING, State.PAUSED, State.SUSPENDED), state
    running_again(vm, probe)
    assert probe.boots() == boots, "the guest was not rebooted"

    # 2. snapshot with memory interrupted
    out, hits["snapshot"] = restart_during(lambda: vm.snapshot("mid"), lambda: busy(vm.name))
    state = true_state(vm)
    assert state in (State.RUNNING, State.PAUSED), state
    names = [s.name for s in vm.snapshots()]
    outcomes["snapshot"] = f"{out.get('error') or 'ok'} -> {state.value}, snapshots {names}"
    if "error" not in out:
        assert names == ["mid"]
    assert set(names) <= {"mid"}
    if names:
        vm.revert("mid")  # a snapshot that is listed is whole
        assert vm.state is State.RUNNING
        vm.delete_snapshot("mid")
    assert vm.snapshots() == []
    running_again(vm, probe)
    assert probe.boots() == boots

    # 3. a graceful stop's wait interrupted (the guest ignores the power button)
    deadline = 8.0
    asked = threading.Event()
    original = vm._do_request_shutdown

    def request() -> None:
        original()
        asked.set()

    vm._do_request_shutdown = request  # type: ignore[method-assign]
    out, hits["stop"] = restart_during(lambda: vm.stop(timeout=deadline), asked.is_set)
    assert out["took"] < deadline + PROMPT
    state = true_state(vm)
    outcomes["stop"] = f"{out.get('error') or 'ok'} in {out['took']:.1f} s -> {state.value}"
    if "error" not in out:
        assert state is State.STOPPED
    else:
        assert state in (State.RUNNING, State.STOPPED), state
        vm.poweroff()
    assert vm.state is State.STOPPED
    vm.start()
    wait_until(lambda: probe.boots() > boots and probe.ready(), BOOT_TIMEOUT, "a fresh boot after the stop")
    assert hits["stop"], "the restart must hit the stop's wait"
    print("libvirtd restarts hit the verb in progress:", hits)
    for verb, outcome in outcomes.items():
        print(f"  {verb}: {outcome}")
