"""job_duration with the real BOINC client: the task's app ends the task successfully once it has
run that long, as vboxwrapper does, and the client reports it done (the VM is QEMU with the test
guest; the guest's job never finishes on its own)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest

from .boinc_peer import BoincPeer, Task, boinc_available
from .test_boinc_e2e import RUN_SH, Watch, alive

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available())),
]

DURATION = 20


def job_toml(guest: TestGuest) -> str:
    return f"""\
backend = "qemu"
image = "disk.qcow2"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "{guest.cmdline} vmctl.share=shared"
memory_mib = 256
shared_dir = true
copy_to_shared = ["run.sh"]
job_duration = {DURATION}

[backend_options]
accel = "tcg"
"""


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[BoincPeer, Task, Watch]]:
    guest = ensure_test_guest()
    task = Task("wu_0")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "job.toml").write_text(job_toml(guest))
    (tmp_path / "run.sh").write_text(RUN_SH)  # counts rounds until told to finish: never, here
    files = {
        "vmctl_job.toml": tmp_path / "job.toml",
        "run.sh": tmp_path / "run.sh",
        "disk.qcow2": guest.disk,
        "vmlinuz": guest.kernel,
        "initrd.img": guest.initrd,
    }
    p = BoincPeer(tmp_path, files, [task], leave_apps_in_memory=True, checkpoint_period=3).build()
    watch = Watch(p)
    try:
        yield p, task, watch
    finally:
        p.close()
        for proc in watch.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()  # psutil checks that it is still the same process


def test_job_duration_ends_the_task_successfully_with_the_real_client(peer: tuple[BoincPeer, Task, Watch]) -> None:
    client, task, watch = peer
    client.allowed_exits[task.result] = 0  # the app ends only at the job's duration
    client.start()
    client.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to run")
    watch.remember_processes()
    client.wait_for(lambda: watch.progress() > 0, 60, "the guest's job to run")
    client.expect_exit(task)
    client.wait_for(lambda: client.info(task).get("ready to report") == "yes", DURATION + 60, "the task to end")
    done = client.info(task)
    assert done["exit_status"] == "0", client.why_not_running(task)
    assert "exited, status 0," in client.app_exits(task)[-1]
    assert float(done["final elapsed time"]) >= DURATION, done
    assert f"the job's duration ({DURATION} s of running time) is reached" in client.stderr_out(task)
    client.wait_for(lambda: not any(alive(p) for p in watch.procs), 20, "the VM's processes to end")
