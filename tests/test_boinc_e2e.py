"""vmctl-boinc end to end: the real BOINC client runs it as a task's app; the VM is the test guest on
QEMU (TCG). Two combined scenarios keep the real-client time to about a minute and a half.

The guest's job (run.sh in the shared directory) counts rounds in guest RAM, writes its progress to
the share every second, and finishes when the host drops ``finish_now`` into the share: it writes
``result.txt`` (with its round count) and the completion trigger ``done``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import vmctl
from vmctl.boinc import reaper
from vmctl.boinc.initdata import read_init_data
from vmctl.testguest import TestGuest, ensure_test_guest

from .boinc_peer import BoincPeer, Task, boinc_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available())),
]

VM = "boinc-wu_0_0"

RUN_SH = """\
i=0
while :; do
    i=$((i + 1))
    printf '0.%03d\\n' "$i" > /tmp/progress
    share put shared /tmp/progress progress
    if share get shared finish_now /tmp/finish 2>/dev/null; then
        echo "rounds=$i" > /tmp/result.txt
        share put shared /tmp/result.txt result.txt
        echo 0 > /tmp/done
        share put shared /tmp/done done
        exit 0
    fi
    sleep 1
done
"""


def job_toml(guest: TestGuest, image: str = "disk.qcow2", retry_delay: float = 30) -> str:
    return f"""\
backend = "qemu"
retry_delay = {retry_delay}
image = "{image}"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "{guest.cmdline} vmctl.share=shared"
memory_mib = 256
network = true
shared_dir = true
copy_to_shared = ["run.sh"]
fraction_done_file = "progress"
completion_trigger_file = "done"
min_checkpoint_interval = 3

[backend_options]
accel = "tcg"

[[output]]
from = "result.txt"
to = "result"
"""


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_peer(root: Path, guest: TestGuest, task: Task, **job: Any) -> BoincPeer:
    root.mkdir(parents=True, exist_ok=True)
    (root / "job.toml").write_text(job_toml(guest, **job))
    (root / "run.sh").write_text(RUN_SH)
    files = {
        "vmctl_job.toml": root / "job.toml",
        "run.sh": root / "run.sh",
        "disk.qcow2": guest.disk,
        "vmlinuz": guest.kernel,
        "initrd.img": guest.initrd,
    }
    return BoincPeer(root, files, [task], leave_apps_in_memory=True, checkpoint_period=3).build()


class Watch:
    """What the test looks at in the task's slot while the task runs."""

    def __init__(self, peer: BoincPeer, slot: int = 0) -> None:
        self.peer = peer
        self.slot = peer.slot(slot)
        self._hv: vmctl.Hypervisor | None = None
        self.procs: set[psutil.Process] = set()
        """The VM's processes seen so far, held as psutil.Process: checked and killed by identity,
        never by a PID that another process may have got meanwhile."""

    def vm(self) -> vmctl.Machine:
        # Connect only while the slot holds the VM: connecting creates the state directory.
        assert (self.slot / "vm" / VM / "machine.json").exists()
        if self._hv is None:
            self._hv = vmctl.connect("qemu", state_dir=self.slot / "vm", accel="tcg")
        return self._hv.machine(VM)

    def vm_state(self) -> vmctl.State | None:
        """The VM's state, None while the slot holds no VM (not made yet, or deleted with it)."""
        try:
            return self.vm().state
        except (AssertionError, vmctl.MachineNotFound):
            if (self.slot / "vm" / VM / "machine.json").exists():
                raise
            return None

    def remember_processes(self) -> None:
        """The VM's QEMU and keeper processes, to check later that none is left."""
        vm = self.vm()
        pids = [vm.pid]
        with contextlib.suppress(FileNotFoundError):
            pids.append(int(json.loads((self.slot / "vm" / VM / "run.json").read_text())["keeper_pid"]))
        for pid in pids:
            if pid is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.procs.add(psutil.Process(pid))

    def console(self) -> str:
        try:
            return (self.slot / "vm_console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def last_link(self) -> str | None:
        lines = [line for line in self.console().splitlines() if line.startswith("VMCTL-GUEST LINK ")]
        return lines[-1].split()[-1] if lines else None

    def progress(self) -> int:
        try:
            return int((self.slot / "shared" / "progress").read_text().strip().split(".")[-1])
        except (FileNotFoundError, ValueError):
            return 0

    def qemu_cpu(self) -> float:
        """CPU seconds of the VM's QEMU process tree, read with psutil directly."""
        pid = self.vm().pid
        assert pid is not None
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # a helper that ended meanwhile
                t = p.cpu_times()
                total += t.user + t.system
        return total


def cpu_pair(info: dict[str, str]) -> tuple[float, float]:
    """(current CPU time, CPU time at last checkpoint) as boinccmd shows them."""
    return float(info.get("current CPU time", "0")), float(info.get("CPU time at last checkpoint", "0"))


def alive(proc: int | psutil.Process) -> bool:
    """The process exists and is no zombie; a psutil.Process only while its PID is not reused."""
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def cleanup() -> Iterator[list[BoincPeer | Watch]]:
    """Quit/kill every client, then kill any VM process a failed test left."""
    things: list[BoincPeer | Watch] = []
    yield things
    for thing in things:
        if isinstance(thing, BoincPeer):
            thing.close()
    for thing in things:
        if isinstance(thing, Watch):
            for proc in thing.procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()  # psutil checks that it is still the same process


def test_a_task_runs_pauses_follows_the_network_survives_a_client_restart_and_completes(
    tmp_path: Path, guest: TestGuest, cleanup: list[BoincPeer | Watch]
) -> None:
    task = Task("wu_0", output="result")
    peer = make_peer(tmp_path, guest, task)
    watch = Watch(peer)
    cleanup += [peer, watch]
    peer.allowed_exits[task.result] = 0  # the adapter must not exit unless the test makes it
    image_hash = sha256(guest.disk)
    peer.start()
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to run")
    watch.remember_processes()
    peer.wait_for(lambda: watch.progress() > 0, 60, "the guest's job to report progress")

    # The adapter read what the real client wrote.
    init = read_init_data(watch.slot)
    assert (init.result_name, init.shm_key, init.client_pid) == ("wu_0_0", -1, peer.proc.pid if peer.proc else 0)
    # The base image is used in place: the slot holds only a copy-on-write overlay on it.
    overlay = watch.slot / "vm" / VM / "disk.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--force-share", "--output=json", str(overlay)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )
    assert info["backing-filename"] == str(peer.project_dir / "v1_disk.qcow2")

    # Network: the client starts with network activity suspended ("never"); the guest follows.
    peer.wait_for(lambda: watch.last_link() == "down", 20, "the guest's link to go down")
    peer.cmd("--set_network_mode", "always")
    peer.wait_for(lambda: watch.last_link() == "up", 20, "the guest's link to come up")
    peer.cmd("--set_network_mode", "never")
    peer.wait_for(lambda: watch.last_link() == "down", 20, "the guest's link to go down again")

    # Suspend and resume through the client: the VM pauses in memory and continues.
    pid = watch.vm().pid
    peer.task_op(task, "suspend")
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.PAUSED, 20, "the VM to pause")
    peer.task_op(task, "resume")
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 20, "the VM to resume")
    assert watch.vm().pid == pid

    # Checkpoints: the client sees them; only the newest snapshot is kept.
    peer.wait_for(lambda: float(peer.info(task).get("CPU time at last checkpoint", "0")) > 0, 30, "a checkpoint")

    def pruned() -> bool:
        """A second checkpoint exists and the first is gone (sampled between checkpoints)."""
        names = [s.name for s in watch.vm().snapshots()]
        return len(names) == 1 and names[0].startswith("vmctl-ckpt-") and int(names[0].split("-")[-1]) >= 2

    peer.wait_for(pruned, 30, "a second checkpoint to replace the first")

    # Client quit: the VM is saved to disk; a new client restores it and CPU time continues.
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    before = peer.info(task)
    cpu_before = float(before["current CPU time"])
    rounds_before = watch.progress()
    qemu_cpu_first_run = watch.qemu_cpu()
    old = set(watch.procs) | {adapter}
    peer.quit()
    assert watch.vm_state() is vmctl.State.SUSPENDED
    assert not any(alive(p) for p in old), "no adapter, QEMU or keeper process left after the quit"
    peer.allowed_exits[task.result] = len(peer.app_exits(task))  # the quit's, if the client logged it
    peer.start()
    # Until the app's first report the client shows the CPU time it kept (its last checkpoint;
    # it reads no app message while shutting down, so the quit's own checkpoint is not in it).
    kept = cpu_pair(peer.info(task))
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to be restored")
    watch.remember_processes()
    assert watch.console().count("VMCTL-GUEST BOOT") == 1, "restored, not rebooted"
    current, checkpoint = peer.wait_for(
        lambda: (pair := cpu_pair(peer.info(task))) != kept and pair, 20, "the restarted task's first report"
    )
    assert checkpoint >= cpu_before and current >= cpu_before, "CPU time continues from the saved state"
    assert current < cpu_before + 5
    peer.wait_for(lambda: watch.progress() > rounds_before, 30, "the guest to continue its count")

    # Completion: output copied to the result's file, VM destroyed, task ready to report.
    qemu_cpu_second_run = watch.qemu_cpu()
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    peer.expect_exit(task)
    (watch.slot / "shared" / "finish_now").write_text("go\n")
    peer.wait_for(lambda: peer.info(task).get("ready to report") == "yes", 60, "the task to finish")
    done = peer.info(task)
    assert done["exit_status"] == "0" and done["state"] == "uploaded"
    assert "exited, status 0," in peer.app_exits(task)[-1], peer.why_not_running(task)
    final_cpu = float(done["final CPU time"])
    vm_cpu = qemu_cpu_first_run + qemu_cpu_second_run
    assert vm_cpu - 0.5 <= final_cpu <= vm_cpu + 8, (final_cpu, vm_cpu)
    rounds = int((peer.project_dir / task.output_file).read_text().strip().split("=")[1])
    assert rounds > rounds_before, "no work lost across the client restart"

    # Nothing left behind.
    peer.wait_for(lambda: not any(alive(p) for p in watch.procs | {adapter}), 20, "the processes to end")
    peer.wait_for(lambda: not watch.slot.exists() or not any(watch.slot.iterdir()), 20, "the slot to be emptied")
    assert list(reaper.registry_dir(peer.data).glob("*.json")) == []
    assert sha256(guest.disk) == image_hash, "the base image is never written"


def test_missing_image_dead_client_preemption_and_abort(
    tmp_path: Path, guest: TestGuest, cleanup: list[BoincPeer | Watch]
) -> None:
    task = Task("wu_0")
    peer = make_peer(tmp_path, guest, task, image="late.qcow2", retry_delay=2)
    watch = Watch(peer)
    cleanup += [peer, watch]
    peer.start()

    def poke(done: Callable[[], bool]) -> bool:
        """A scheduling pass (suspend + resume by the user): the client restarts a postponed
        task once its delay has passed, else only at its periodic pass, up to a minute later."""
        if done():
            return True
        peer.task_op(task, "suspend")
        peer.task_op(task, "resume")
        return False

    # The job's image is not in the slot: a temporary exit with the reason, delays growing.
    reason = "the base image 'late.qcow2' is missing"
    peer.wait_for(lambda: "postponed for 2 seconds: " + reason in peer.log(), 30, "a temporary exit")
    peer.wait_for(lambda: poke(lambda: "postponed for 4 seconds: " + reason in peer.log()), 30, "a longer delay", 1)
    assert reason in (watch.slot / "stderr.txt").read_text()
    assert watch.vm_state() is None, "no VM was made"

    # The image appears (say, a download finished): the task runs at its next start. The client
    # links it into the slot from the project directory (vmctl-boinc refuses links out of it).
    shutil.copyfile(guest.disk, peer.project_dir / "late.qcow2")
    (watch.slot / "late.qcow2").symlink_to(peer.project_dir / "late.qcow2")
    peer.wait_for(lambda: poke(lambda: watch.vm_state() is vmctl.State.RUNNING), 60, "the VM to run", 1)
    watch.remember_processes()
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    peer.allowed_exits[task.result] = len(peer.app_exits(task))  # from now on, only the exits the test causes

    # The client dies (SIGKILL): the adapter notices its pid gone, saves the VM and exits; the
    # next client restores the VM.
    assert peer.proc is not None
    client_pid = peer.proc.pid
    peer.kill()
    peer.wait_for(lambda: not alive(adapter), 15, "the adapter to notice the dead client")
    assert watch.vm_state() is vmctl.State.SUSPENDED
    assert f"the BOINC client (pid {client_pid}) is gone" in (watch.slot / "stderr.txt").read_text()
    peer.start()
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to be restored")
    watch.remember_processes()
    peer.wait_for(lambda: "VMCTL-GUEST READY" in watch.console(), 60, "the guest to be up")
    assert watch.console().count("VMCTL-GUEST BOOT") == 1, "restored, not rebooted"

    # Preemption with leave_apps_in_memory off: once the task has checkpointed, a suspend
    # arrives as <quit/>; the VM goes to disk and comes back on resume.
    peer.leave_apps_in_memory = False
    peer.write_prefs()
    peer.cmd("--read_global_prefs_override")
    peer.wait_for(lambda: cpu_pair(peer.info(task))[1] > 0, 20, "a checkpoint")
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    peer.expect_exit(task)
    peer.task_op(task, "suspend")
    peer.wait_for(lambda: not alive(adapter), 20, "the preempted app to exit")
    assert watch.vm_state() is vmctl.State.SUSPENDED
    assert "removed from memory" in peer.log()
    peer.task_op(task, "resume")
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to be restored")
    watch.remember_processes()
    assert watch.console().count("VMCTL-GUEST BOOT") == 1
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")

    # Abort: the VM, its overlay and its processes are gone; the client records the abort.
    peer.expect_exit(task)
    peer.task_op(task, "abort")
    peer.wait_for(lambda: peer.info(task).get("state") == "aborted", 30, "the abort")
    assert peer.info(task).get("exit_status") == "203"
    peer.wait_for(lambda: not any(alive(p) for p in watch.procs | {adapter}), 20, "the processes to end")
    peer.wait_for(lambda: not watch.slot.exists() or not any(watch.slot.iterdir()), 20, "the slot to be emptied")
    assert list(reaper.registry_dir(peer.data).glob("*.json")) == []
    assert "the client aborted the task" in peer.stderr_out(task)
