"""The BOINC adapter's behaviour, one test per item of issue 4's list, on the in-memory backend.

Each test builds a BOINC data directory layout (project dir, slot with soft-link files), a client
double that writes into a real ``boinc_mmap_file`` what the client writes, and an adapter whose
hypervisor is an in-process memory backend and whose clock is fake, so that 30 s of heartbeat
silence or a checkpoint period pass in microseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

import vmctl
from vmctl.boinc import reaper
from vmctl.boinc.adapter import (
    EXIT_ABORTED_BY_CLIENT,
    EXIT_CHILD_FAILED,
    EXIT_INIT_FAILURE,
    HEARTBEAT_TIMEOUT,
    Adapter,
    trouble_delay,
)
from vmctl.boinc.hostconfig import CONFIG_ENV
from vmctl.boinc.initdata import read_init_data
from vmctl.boinc.job import find_job_file, load_job
from vmctl.boinc.shm import open_shared_memory
from vmctl.boinc.slot import FINISH_FILE, STATE_FILE, TEMPORARY_EXIT_FILE, Slot
from vmctl.boinc.state import TaskState
from vmctl.boinc.testing import FakeClient
from vmctl_memory import MemoryHypervisor, MemoryMachine

JOB = """\
backend = "memory"
image = "vm_image.img"
shared_dir = true
completion_trigger_file = "done"
temporary_exit_trigger_file = "later"
min_checkpoint_interval = 5
{extra}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@dataclass
class Env:
    boinc_dir: Path
    project: Path
    slot: Path
    client: FakeClient
    hv: MemoryHypervisor
    clock: FakeClock

    @property
    def registry(self) -> Path:
        return reaper.registry_dir(self.boinc_dir)

    def write_job(self, extra: str = "", text: str | None = None, name: str = "vmctl_job.toml") -> None:
        (self.project / f"v1_{name}").write_text(text if text is not None else JOB.format(extra=extra))
        link = self.slot / name
        if not link.exists():
            link.write_text(f"<soft_link>../../projects/p/v1_{name}</soft_link>\n")

    def adapter(self, **kwargs: Any) -> Adapter:
        init = read_init_data(self.slot)
        job = load_job(find_job_file(self.slot))
        return Adapter(
            Slot(self.slot),
            init,
            job,
            open_shared_memory(self.slot, init.shm_key),
            connect=kwargs.pop("connect", lambda backend, options: self.hv),
            clock=self.clock,
            sleep=self.clock.sleep,
            **kwargs,
        )

    def run(
        self, adapter: Adapter, seconds: float, *, heartbeat: bool = True, network_suspended: bool = False
    ) -> int | None:
        """Step the adapter through ``seconds`` of fake time, the client beating once a second."""
        for i in range(round(seconds * 10)):
            self.clock.now += 0.1
            if heartbeat and i % 10 == 0:
                self.client.heartbeat(network_suspended=network_suspended)
            self.client.poll()
            code = adapter.step()
            if code is not None:
                return code
        return None

    def send(self, adapter: Adapter, message: str) -> int | None:
        self.client.control(message)
        return self.run(adapter, 0.2)

    def vm(self, name: str = "boinc-wu_0_0") -> MemoryMachine:
        vm = self.hv.machine(name)
        assert isinstance(vm, MemoryMachine)
        return vm

    def status(self) -> dict[str, float]:
        """The status message pending in the channel."""
        status = self.client.status()
        assert status is not None, "the adapter sent no status"
        return status

    def next_status(self, adapter: Adapter) -> dict[str, float]:
        """Take whatever is pending, let a second pass, and return the status sent meanwhile."""
        self.client.status()
        self.run(adapter, 1.05)
        return self.status()

    def shared(self) -> Path:
        return self.slot / "shared"


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[Env]:
    """A slot, the client double, a private in-memory backend and a fake clock."""
    boinc_dir = tmp_path / "boinc"
    project = boinc_dir / "projects" / "p"
    slot = boinc_dir / "slots" / "0"
    project.mkdir(parents=True)
    slot.mkdir(parents=True)
    (project / "v1_base.img").write_bytes(b"\x00" * 65536)
    (slot / "vm_image.img").write_text("<soft_link>../../projects/p/v1_base.img</soft_link>\n")
    client = FakeClient(slot, project_dir=str(project), boinc_dir=str(boinc_dir), checkpoint_period=1.0)
    hv = MemoryHypervisor(namespace=f"boinc-{uuid.uuid4().hex}")
    e = Env(boinc_dir, project, slot, client, hv, FakeClock())
    e.write_job()
    try:
        yield e
    finally:
        client.close()
        for vm in hv.machines():
            vm.destroy()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        yield e


def started(env: Env, **kwargs: Any) -> Adapter:
    adapter = env.adapter(**kwargs)
    assert adapter.start() is None
    return adapter


# -- suspend / resume ----------------------------------------------------------------------------


def test_suspend_pauses_and_resume_resumes_in_memory(env: Env) -> None:
    adapter = started(env)
    vm = env.vm()
    pid = vm.pid
    assert vm.state is vmctl.State.RUNNING
    assert env.send(adapter, "<suspend/>") is None
    assert vm.state is vmctl.State.PAUSED
    assert env.run(adapter, 3) is None
    assert vm.state is vmctl.State.PAUSED, "a suspended task's VM stays paused"
    assert env.send(adapter, "<resume/>") is None
    assert vm.state is vmctl.State.RUNNING
    assert vm.pid == pid and vm.guest_boots() == 1, "the VM stayed in memory: same process, no reboot"


def test_cpu_throttling_cycles_do_not_flood_stderr(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    adapter = started(env)
    caplog.set_level("INFO", logger="vmctl.boinc")
    for _ in range(20):  # the client throttles CPU use by suspending and resuming
        env.send(adapter, "<suspend/>")
        assert env.vm().state is vmctl.State.PAUSED
        env.send(adapter, "<resume/>")
        assert env.vm().state is vmctl.State.RUNNING
    lines = [r.getMessage() for r in caplog.records if r.name == "vmctl.boinc" and r.levelname == "INFO"]
    assert len([line for line in lines if "suspended" in line or "resumed" in line]) <= 2


def test_no_status_while_suspended(env: Env) -> None:
    adapter = started(env)
    env.send(adapter, "<suspend/>")
    env.client.status()
    env.run(adapter, 3)
    assert env.client.status() is None
    env.send(adapter, "<resume/>")
    env.run(adapter, 1.1)
    assert env.client.status() is not None


# -- quit ----------------------------------------------------------------------------------------


def test_quit_saves_state_and_the_next_start_restores_it(env: Env) -> None:
    adapter = started(env, reap_at_start=False)
    env.run(adapter, 2)
    vm = env.vm()
    counter = vm.guest_counter()
    assert env.send(adapter, "<quit/>") == 0
    assert vm.state is vmctl.State.SUSPENDED
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists() and not (env.slot / FINISH_FILE).exists()
    final = env.status()
    assert final["checkpoint_cpu_time"] == final["current_cpu_time"] > 0, "the saved state is a checkpoint"
    saved = TaskState.load(env.slot / STATE_FILE)
    assert saved is not None and saved.saved_cpu_time == pytest.approx(final["checkpoint_cpu_time"], rel=1e-6)

    env.client.write_init_data(wu_cpu_time=final["checkpoint_cpu_time"])  # what the client passes back
    adapter = started(env)
    assert vm.state is vmctl.State.RUNNING
    assert vm.guest_boots() == 1, "restored, not rebooted"
    assert vm.guest_counter() >= counter, "no work lost"
    assert env.next_status(adapter)["current_cpu_time"] >= final["current_cpu_time"], "CPU time continues"


def test_quit_while_suspended_saves_too(env: Env) -> None:
    adapter = started(env)
    env.send(adapter, "<suspend/>")
    assert env.send(adapter, "<quit/>") == 0
    assert env.vm().state is vmctl.State.SUSPENDED


def test_cpu_time_survives_a_client_that_missed_the_final_report(env: Env) -> None:
    """The client reads no app message while it shuts down: on restart, wu_cpu_time is older
    than the state the VM resumes from, and the adapter's own record wins."""
    env.client.write_init_data(wu_cpu_time=50.0)
    adapter = started(env)
    env.run(adapter, 1)
    env.send(adapter, "<quit/>")
    saved = env.status()["checkpoint_cpu_time"]
    assert saved > 50.0
    adapter = started(env)  # init_data.xml still says 50
    status = env.next_status(adapter)
    assert status["checkpoint_cpu_time"] == saved
    assert status["current_cpu_time"] >= saved


def test_signal_is_a_quit(env: Env) -> None:
    adapter = started(env)
    adapter.request_quit("signal SIGTERM")
    assert env.run(adapter, 0.2) == 0
    assert env.vm().state is vmctl.State.SUSPENDED


# -- abort -----------------------------------------------------------------------------------------


def test_abort_destroys_the_vm_and_leaves_nothing(env: Env) -> None:
    adapter = started(env)
    env.run(adapter, 2)
    record = list(env.registry.glob("*.json"))
    assert len(record) == 1
    assert env.send(adapter, "<abort/>") == EXIT_ABORTED_BY_CLIENT
    assert env.hv.machines() == []
    assert not (env.slot / STATE_FILE).exists()
    assert list(env.registry.glob("*.json")) == []
    assert not (env.slot / FINISH_FILE).exists()
    assert (env.project / "v1_base.img").stat().st_size == 65536, "the base image is untouched"


# -- a dead or frozen client -------------------------------------------------------------------------


def test_missing_heartbeat_saves_and_exits_within_35_s(env: Env) -> None:
    adapter = started(env)
    env.run(adapter, 2)
    silent_since = env.clock.now - 1.0  # the last heartbeat went out at most a second ago
    code = env.run(adapter, 60, heartbeat=False)
    assert code == 0
    assert HEARTBEAT_TIMEOUT <= env.clock.now - silent_since <= 35
    assert env.vm().state is vmctl.State.SUSPENDED
    delay, reason = (env.slot / TEMPORARY_EXIT_FILE).read_text().splitlines()[:2]
    assert delay == "0" and "heartbeat" in reason


def test_client_pid_gone_saves_and_exits(env: Env) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env.client.write_init_data(client_pid=dead.pid)
    adapter = started(env)
    started_at = env.clock.now
    assert env.run(adapter, 5) == 0
    # noticed within a second; then up to 1.5 s for the client to take the last status
    assert env.clock.now - started_at <= 3.0
    assert env.vm().state is vmctl.State.SUSPENDED
    assert f"pid {dead.pid}" in (env.slot / TEMPORARY_EXIT_FILE).read_text()


# -- network ------------------------------------------------------------------------------------------


def test_network_follows_the_clients_network_mode(env: Env) -> None:
    env.write_job("network = true")
    adapter = started(env)
    vm = env.vm()
    env.run(adapter, 1.1)
    assert vm.guest_link_up()
    env.run(adapter, 1.1, network_suspended=True)
    assert not vm.guest_link_up()
    env.run(adapter, 1.1)
    assert vm.guest_link_up()


def test_network_left_alone_for_jobs_without_network(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(MemoryMachine, "_do_set_network", lambda self, enabled: calls.append(enabled))
    adapter = started(env)
    assert env.vm().spec.network is None
    env.run(adapter, 2.1, network_suspended=True)
    env.run(adapter, 2.1)
    assert calls == []


# -- checkpoints ----------------------------------------------------------------------------------------


def snapshot_names(vm: vmctl.Machine) -> list[str]:
    return [s.name for s in vm.snapshots()]


def test_checkpoints_every_max_of_client_period_and_job_minimum(env: Env) -> None:
    adapter = started(env)  # client period 1 s, job minimum 5 s
    vm = env.vm()
    env.run(adapter, 4.5)
    assert snapshot_names(vm) == []
    env.run(adapter, 1.2)
    assert snapshot_names(vm) == ["vmctl-ckpt-1"]
    state = TaskState.load(env.slot / STATE_FILE)
    assert state is not None and state.checkpoint is not None and state.checkpoint.snapshot == "vmctl-ckpt-1"
    assert env.next_status(adapter)["checkpoint_cpu_time"] == pytest.approx(state.checkpoint.cpu_time, rel=1e-6)
    env.run(adapter, 5)
    assert snapshot_names(vm) == ["vmctl-ckpt-2"], "older checkpoints are deleted"
    env.client.write_init_data(checkpoint_period=30.0)
    env.send(adapter, "<reread_app_info/>")
    assert adapter.checkpoint_interval == 30.0


def test_a_crash_during_a_snapshot_leaves_the_previous_checkpoint_usable(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = started(env)
    env.run(adapter, 5.5)
    vm = env.vm()
    assert snapshot_names(vm) == ["vmctl-ckpt-1"]
    counter_at_ckpt1 = vm.snapshots()[0]
    original = MemoryMachine._do_snapshot

    def half_done(self: MemoryMachine, name: str, description: str, timeout: float) -> vmctl.Snapshot:
        original(self, name, description, timeout)  # the snapshot exists, then the host dies
        raise vmctl.BackendError("power lost")

    monkeypatch.setattr(MemoryMachine, "_do_snapshot", half_done)
    env.run(adapter, 5)
    state = TaskState.load(env.slot / STATE_FILE)
    assert state is not None and state.checkpoint is not None
    assert state.checkpoint.snapshot == "vmctl-ckpt-1", "the record still names the previous checkpoint"
    monkeypatch.setattr(MemoryMachine, "_do_snapshot", original)

    vm.crash()  # ... and the adapter died with the host
    adapter = started(env)
    assert vm.state is vmctl.State.RUNNING
    assert snapshot_names(vm) == ["vmctl-ckpt-1"], "the half-made checkpoint was removed"
    assert counter_at_ckpt1.has_memory


def test_state_file_is_replaced_atomically(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = started(env)
    env.run(adapter, 5.5)
    before = (env.slot / STATE_FILE).read_bytes()

    def power_cut(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    env.run(adapter, 5)
    monkeypatch.undo()
    assert (env.slot / STATE_FILE).read_bytes() == before
    state = TaskState.load(env.slot / STATE_FILE)
    assert state is not None and state.checkpoint is not None
    assert [p.name for p in env.slot.iterdir() if p.name.endswith(".tmp")] == []


# -- CPU time and progress ----------------------------------------------------------------------------


@pytest.fixture
def vm_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A real host process standing in for the memory backend's VM process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(MemoryMachine, "_get_pid", lambda self: proc.pid)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_cpu_time_is_vm_cpu_plus_earlier_runs_every_second(env: Env, vm_process: int) -> None:
    env.write_job("job_duration = 10")
    env.client.write_init_data(wu_cpu_time=100.0)
    adapter = started(env)
    vm = env.vm()
    reports = []
    env.client.status()
    for _ in range(3):
        env.run(adapter, 1.0)
        status = env.status()  # one a second
        usage = vm.usage().cpu_seconds
        assert usage is not None
        reports.append(status)
        assert status["current_cpu_time"] > 100.0
        assert status["current_cpu_time"] == pytest.approx(100.0 + usage, abs=0.05)
        assert status["other_pid"] == vm.pid == vm_process
    fractions = [r["fraction_done"] for r in reports]  # job_duration 10 s: +0.1 per second
    assert [b - a for a, b in itertools.pairwise(fractions)] == pytest.approx([0.1, 0.1], abs=0.011)
    assert 0 < fractions[0] < 0.1


def test_other_pid_names_only_a_live_process(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client SIGKILLs other_pid: a pid without a live process (the in-memory backend's are
    made up) is never reported. The adapter names itself instead: the client keeps the last
    other_pid it was told, even one of an earlier run of the app, and kills it at the exit."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    monkeypatch.setattr(MemoryMachine, "_get_pid", lambda self: gone.pid)
    adapter = started(env)
    assert env.vm().pid == gone.pid
    assert env.next_status(adapter)["other_pid"] == os.getpid()


def test_fraction_done_from_the_guests_progress_file(env: Env) -> None:
    env.write_job('fraction_done_file = "progress"')
    adapter = started(env)
    (env.shared() / "progress").write_text("0.1\n0.25\n")
    assert env.next_status(adapter)["fraction_done"] == pytest.approx(0.25)


# -- completion -------------------------------------------------------------------------------------------


def output_job(env: Env) -> None:
    env.write_job('[[output]]\nfrom = "result.txt"\nto = "result"\n')
    (env.slot / "result").write_text("<soft_link>../../projects/p/wu_0_0_r0</soft_link>\n")


def test_completion_trigger_copies_output_destroys_vm_and_finishes(env: Env) -> None:
    output_job(env)
    adapter = started(env)
    env.run(adapter, 2)
    (env.shared() / "result.txt").write_text("42\n")
    (env.shared() / "done").write_text("0\n")
    assert env.run(adapter, 2) == 0
    assert (env.project / "wu_0_0_r0").read_text() == "42\n", "copied to the output file through its link"
    assert env.hv.machines() == []
    assert (env.slot / FINISH_FILE).read_text() == "0\n"
    assert list(env.registry.glob("*.json")) == []
    assert env.status()["fraction_done"] == 1.0


def test_completion_trigger_with_an_error_code(env: Env) -> None:
    adapter = started(env)
    (env.shared() / "done").write_text("3\n1\nthe input was bad\n")
    assert env.run(adapter, 2) == 3
    assert (env.slot / FINISH_FILE).read_text() == "3\nthe input was bad\nnotice\n"
    assert env.hv.machines() == []


def test_completion_by_the_guest_powering_off(env: Env) -> None:
    output_job(env)
    adapter = started(env)
    (env.shared() / "result.txt").write_text("done\n")
    env.vm().stop()  # the guest powers itself off
    assert env.run(adapter, 2) == 0
    assert (env.project / "wu_0_0_r0").read_text() == "done\n"
    assert env.hv.machines() == []


def test_a_guest_that_powers_off_without_output_is_retried(env: Env) -> None:
    output_job(env)
    adapter = started(env)
    env.vm().stop()
    assert env.run(adapter, 2) == 0
    assert "powered off" in (env.slot / TEMPORARY_EXIT_FILE).read_text()
    assert not (env.slot / FINISH_FILE).exists()


def test_completion_without_declared_output_fails(env: Env) -> None:
    output_job(env)
    adapter = started(env)
    (env.shared() / "done").write_text("0\n")
    assert env.run(adapter, 2) == EXIT_CHILD_FAILED


def test_guest_asks_for_a_temporary_exit(env: Env) -> None:
    adapter = started(env)
    (env.shared() / "later").write_text("600\n0\nwaiting for a licence\n")
    assert env.run(adapter, 2) == 0
    assert (env.slot / TEMPORARY_EXIT_FILE).read_text() == "600\nwaiting for a licence\n"
    assert env.vm().state is vmctl.State.SUSPENDED
    assert not (env.shared() / "later").exists()


# -- hypervisor trouble ------------------------------------------------------------------------------------


def temporary_exit(env: Env) -> tuple[int, str]:
    delay, reason = (env.slot / TEMPORARY_EXIT_FILE).read_text().splitlines()[:2]
    return int(delay), reason


def test_backend_unavailable_is_a_temporary_exit_with_growing_delay(env: Env) -> None:
    def unavailable(backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
        raise vmctl.BackendUnavailable(backend, "qemu-system-x86_64 not found", "apt-get install qemu-system-x86")

    delays = []
    for _ in range(3):
        assert env.adapter(connect=unavailable).start() == 0
        delay, reason = temporary_exit(env)
        assert "qemu-system-x86_64 not found" in reason
        delays.append(delay)
    assert delays == [30, 60, 120] == [trouble_delay(n) for n in (1, 2, 3)]
    adapter = started(env)  # the hypervisor is back
    env.run(adapter, 5.5)  # a checkpoint: the run went well
    state = TaskState.load(env.slot / STATE_FILE)
    assert state is not None and state.troubles == 0


def test_vm_that_does_not_start_is_a_temporary_exit(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: MemoryMachine, timeout: float) -> None:
        raise vmctl.BackendError("qemu: could not allocate memory")

    monkeypatch.setattr(MemoryMachine, "_do_start", broken)
    assert env.adapter().start() == 0
    delay, reason = temporary_exit(env)
    assert delay == 30 and "could not allocate memory" in reason


def test_vm_crash_is_a_temporary_exit_and_the_next_run_reverts(env: Env) -> None:
    adapter = started(env)
    env.run(adapter, 5.5)
    env.vm().crash()
    assert env.run(adapter, 2) == 0
    assert "crashed" in temporary_exit(env)[1]
    adapter = started(env)
    assert env.vm().state is vmctl.State.RUNNING
    assert env.vm().guest_boots() == 1, "reverted to the checkpoint, not rebooted"


def test_gives_up_after_max_retries(env: Env) -> None:
    env.write_job("max_retries = 2")

    def unavailable(backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
        raise vmctl.BackendUnavailable(backend, "gone")

    assert [env.adapter(connect=unavailable).start() for _ in range(3)] == [0, 0, EXIT_CHILD_FAILED]


def test_missing_image_is_a_temporary_exit_with_a_reason(env: Env) -> None:
    (env.project / "v1_base.img").unlink()
    assert env.adapter().start() == 0
    delay, reason = temporary_exit(env)
    assert delay == 30 and "base image 'vm_image.img' is missing" in reason
    assert env.hv.machines() == []


def test_image_that_is_not_a_file_fails_the_task(env: Env) -> None:
    (env.project / "v1_base.img").unlink()
    (env.project / "v1_base.img").mkdir()
    assert env.adapter().start() == EXIT_INIT_FAILURE


@pytest.mark.parametrize("image", ["missing", "directory"])
def test_a_run_that_ends_before_its_vm_runs_still_names_an_other_pid(env: Env, image: str) -> None:
    """The client keeps the other_pid of an earlier run of the app (say, the VM process saved at
    a quit, long gone) and SIGKILLs it when this run exits: a run that ends before its VM runs,
    temporarily or for good, must replace it, naming the adapter itself."""
    (env.project / "v1_base.img").unlink()
    if image == "directory":
        (env.project / "v1_base.img").mkdir()
    assert env.adapter().start() == (0 if image == "missing" else EXIT_INIT_FAILURE)
    assert env.status()["other_pid"] == os.getpid()


def test_the_base_image_is_used_in_place_through_an_overlay(env: Env) -> None:
    started(env)
    spec = env.vm().spec
    assert spec.disk == env.project / "v1_base.img" and spec.overlay
    assert spec.serial_log == env.slot / "vm_console.log"
    assert spec.shared_dirs == {"shared": env.slot / "shared"}


# -- adopting and reaping -----------------------------------------------------------------------------------


def test_an_adapter_killed_while_the_vm_runs_is_replaced_seamlessly(env: Env) -> None:
    env.client.write_init_data(wu_cpu_time=10.0)
    adapter = started(env)
    env.run(adapter, 1.1)
    env.status()
    # the adapter dies (SIGKILL); the VM keeps running; the client restarts the app
    adapter = started(env)
    assert env.vm().guest_boots() == 1
    status = env.next_status(adapter)
    usage = env.vm().usage().cpu_seconds
    assert usage is not None
    assert status["current_cpu_time"] == pytest.approx(10.0 + usage, abs=0.05)


def test_the_reaper_removes_vms_of_vanished_tasks(env: Env) -> None:
    ghost = env.boinc_dir / "slots" / "7"
    other = env.hv.create(vmctl.MachineSpec(name="boinc-ghost_0", disk=env.project / "v1_base.img"))
    other.start()
    reaper.register(
        env.registry,
        reaper.Record(vm="boinc-ghost_0", backend="memory", options={}, slot_dir=str(ghost), result_name="ghost_0"),
    )
    live_slot = env.boinc_dir / "slots" / "3"
    live = FakeClient(live_slot, result_name="live_0")
    try:
        env.hv.create(vmctl.MachineSpec(name="boinc-live_0", disk=env.project / "v1_base.img"))
        reaper.register(
            env.registry,
            reaper.Record(
                vm="boinc-live_0", backend="memory", options={}, slot_dir=str(live_slot), result_name="live_0"
            ),
        )
        started(env)  # every adapter reaps at start
        names = sorted(vm.name for vm in env.hv.machines())
        assert names == ["boinc-live_0", "boinc-wu_0_0"]
        assert sorted(p.name for p in env.registry.glob("*.json")) == [
            "boinc-live_0@slot3.json",
            "boinc-wu_0_0@slot0.json",
        ]
        # the slot is reused by another task: the old task is gone
        live.write_init_data(result_name="next_0")
        assert reaper.reap(env.registry, lambda b, o: env.hv, keep=frozenset({"boinc-wu_0_0"})) == ["boinc-live_0"]
    finally:
        live.close()


def test_reaper_ends_a_leftover_vm_process_whose_slot_was_emptied(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        directory = tmp_path / "registry"
        reaper.register(
            directory,
            reaper.Record(
                vm="boinc-x",
                backend="qemu",
                options={"state_dir": str(tmp_path / "slot" / "vm")},
                slot_dir=str(tmp_path / "slot"),
                result_name="x",
                state_dir=str(tmp_path / "slot" / "vm"),
                pid=sleeper.pid,
            ),
        )
        assert reaper.reap(directory) == ["boinc-x"]
        assert not psutil.pid_exists(sleeper.pid) or psutil.Process(sleeper.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        sleeper.kill()
        sleeper.wait()


# -- messages in stderr.txt -----------------------------------------------------------------------------------


def vbox_env(env: Env, text: str) -> None:
    (env.slot / "vmctl_job.toml").unlink()
    (env.project / "v1_base.img").rename(env.project / "vm.vdi")
    (env.slot / "vm_image.vdi").write_text("<soft_link>../../projects/p/vm.vdi</soft_link>\n")
    env.write_job(text=text, name="vbox_job.xml")


def test_vbox_job_a_guest_contract_that_cannot_be_kept_fails_at_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    vbox_env(
        env,
        "<vbox_job><memory_size_mb>512</memory_size_mb><network_bridged_mode/><enable_floppyio/>"
        "<enable_cache_disk>0</enable_cache_disk><enable_shared_directory/></vbox_job>",
    )
    # the memory backend stands in for the default QEMU backend here
    adapter = env.adapter()
    caplog.set_level("INFO", logger="vmctl")
    assert adapter.start() == EXIT_INIT_FAILURE, "failed at once, never a temporary exit retried for hours"
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists()
    assert env.hv.machines() == [], "no VM made for a guest that would wait in vain"
    (message,) = [r.getMessage() for r in caplog.records if "cannot give the guest" in r.getMessage()]
    assert "qemu backend" in message and "network_bridged_mode" in message
    assert "enable_floppyio" not in message, "a floppy the backend gives is no refusal"
    assert "enable_cache_disk" not in message, "a key set to 0 asks for nothing"


def test_vbox_job_ignored_keys_are_said_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    vbox_env(env, "<vbox_job><memory_size_mb>512</memory_size_mb><vram_size_mb>16</vram_size_mb></vbox_job>")
    caplog.set_level("INFO", logger="vmctl")
    adapter = started(env)
    assert env.vm().spec.memory_mib == 512
    assert env.send(adapter, "<quit/>") == 0
    started(env)
    said = [r for r in caplog.records if r.getMessage().startswith("job file: vram_size_mb: ignored")]
    assert len(said) == 1, "said at the task's first start only"


def test_stderr_lines_are_timestamped_and_job_errors_fail_clearly(env: Env) -> None:
    env.write_job("colour = 'blue'")
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INIT_FAILURE
    lines = proc.stderr.strip().splitlines()
    assert lines, "a message in stderr.txt"
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+\): ", line), line
    assert "unknown key(s) 'colour'" in proc.stderr


def test_console_script_runs_a_task_to_completion(env: Env) -> None:
    """The whole program as the client starts it (memory backend: the VM lives in the adapter's
    process), for a guest whose work is already done."""
    config = env.boinc_dir.parent / "boinc.toml"  # the host's, outside the BOINC data directory
    config.write_text('[profiles.memory]\nbackend = "memory"\noptions = { namespace = "e2e" }\n')
    (env.shared()).mkdir()
    (env.shared() / "done").write_text("0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        env={**os.environ, CONFIG_ENV: str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (env.slot / FINISH_FILE).read_text() == "0\n"
    assert "the guest's work is done" in proc.stderr


def test_reap_command(tmp_path: Path) -> None:
    """``vmctl-boinc --reap --boinc-dir D``: a VM process whose task's slot was emptied is ended."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        slot = tmp_path / "slots" / "4"
        reaper.register(
            reaper.registry_dir(tmp_path),
            reaper.Record(
                vm="boinc-gone_0",
                backend="qemu",
                options={"state_dir": str(slot / "vm")},
                slot_dir=str(slot),
                result_name="gone_0",
                state_dir=str(slot / "vm"),
                pid=sleeper.pid,
            ),
        )
        proc = subprocess.run(
            [sys.executable, "-m", "vmctl.boinc", "--reap", "--boinc-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "reaped 1 VM(s) of vanished tasks" in proc.stderr and "boinc-gone_0" in proc.stderr
        assert sleeper.wait(10) == -9
        assert list(reaper.registry_dir(tmp_path).glob("*.json")) == []
    finally:
        sleeper.kill()
        sleeper.wait()


# -- the guest's heartbeat file --------------------------------------------------------------------
def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_a_stale_guest_heartbeat_means_a_hung_vm(env: Env) -> None:
    # vboxwrapper's rules: a look every interval / 3 s of running time; three looks in a row
    # without a change of the file are no heartbeat.
    env.write_job('heartbeat_file = "alive"\nheartbeat_interval = 60')
    adapter = started(env)
    beat = env.shared() / "alive"
    beat.write_text("")
    assert env.run(adapter, 21) is None  # the first look: the file exists
    assert env.run(adapter, 40) is None, "two looks without a change are not yet a verdict"
    assert env.run(adapter, 21) == 0
    _delay, reason, *_ = (env.slot / "boinc_temporary_exit").read_text().splitlines()
    assert "heartbeat" in reason and "60 s" in reason


def test_a_heartbeat_is_any_change_of_the_file_even_back_in_time(env: Env) -> None:
    """The guest's clock may be behind the host's or jump: a change counts, never an age."""
    env.write_job('heartbeat_file = "alive"\nheartbeat_interval = 60')
    adapter = started(env)
    beat = env.shared() / "alive"
    beat.write_text("")
    for i in range(12):
        _age(beat, 3600 + 100 * i)  # ever older, as a guest clock running backwards would set it
        assert env.run(adapter, 15) is None
    assert env.vm().state is vmctl.State.RUNNING


def test_a_heartbeat_file_never_written_means_a_hung_vm(env: Env) -> None:
    env.write_job('heartbeat_file = "alive"\nheartbeat_interval = 30')
    adapter = started(env)
    assert env.run(adapter, 29) is None
    assert env.run(adapter, 2.5) == 0
    assert "heartbeat" in (env.slot / "boinc_temporary_exit").read_text()


def test_a_suspended_task_is_not_taken_for_a_hung_guest(env: Env) -> None:
    """A paused guest cannot touch its heartbeat file: neither the suspension nor the first
    interval after the resume may count against it."""
    env.write_job('heartbeat_file = "alive"\nheartbeat_interval = 60')
    adapter = started(env)
    beat = env.shared() / "alive"
    beat.write_text("")
    assert env.send(adapter, "<suspend/>") is None
    _age(beat, 600)  # a long suspension, as measured by the file's age
    assert env.run(adapter, 3) is None
    assert env.send(adapter, "<resume/>") is None
    assert env.run(adapter, 3) is None
    assert env.vm().state is vmctl.State.RUNNING
    assert not (env.slot / "boinc_temporary_exit").exists()


def test_reread_app_info_keeps_the_times_this_run_started_from(env: Env) -> None:
    # The client rewrites init_data.xml on <reread_app_info/> with the *last checkpoint's* elapsed and
    # CPU time (request_reread_app_info); taking those would count the time since then twice.
    adapter = started(env)
    env.run(adapter, 6)
    before = adapter.elapsed()
    env.client.write_init_data(starting_elapsed_time=5.0, wu_cpu_time=4.0, checkpoint_period=30.0)
    env.send(adapter, "<reread_app_info/>")
    assert adapter.checkpoint_interval == 30.0, "the new preferences are taken"
    assert adapter.elapsed() - before < 1.0, "elapsed time is not counted twice (it would jump by 5 s)"
    assert adapter.init.wu_cpu_time == 0.0
