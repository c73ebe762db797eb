"""The frozen ``vmctl-boinc`` on a host without Python: Debian's real BOINC client, in a root that
has the client and QEMU and no Python (``.ci/nopython-root`` builds it; ``$VMCTL_NOPYTHON_ROOT``
names it), runs the packaged app version: the task runs, suspends and resumes, survives the
client quitting and restarting (the VM saved and restored), and completes.

The client runs in new mount and PID namespaces (tests/nopython_root.sh); the test drives it
with the host's ``boinccmd`` over loopback and reads the files the client and the guest write
(its process IDs are the namespace's, so it never looks at processes).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vmctl.testguest import TestGuest

from .boinc_peer import BoincPeer, Task, boinc_available
from .test_boinc_e2e import guest
from .test_boinc_package import package

__all__ = ["guest"]  # the fixture this module borrows

ROOT = os.environ.get("VMCTL_NOPYTHON_ROOT", "")
ENTER = Path(__file__).with_name("nopython_root.sh")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available())),
    pytest.mark.skipif(not ROOT, reason="no Python-less root: export VMCTL_NOPYTHON_ROOT=$(.ci/nopython-root)"),
]
BUILD_DEADLINE = 900.0


@pytest.fixture(scope="module")
def built_root() -> Iterator[str]:
    """The root, once a build that runs beside the suite (``.ci/test`` starts one) has finished:
    a build holds ``ROOT.lock`` exclusively, so holding it shared means no build is under way."""
    with open(f"{ROOT}.lock", "a") as lock:
        deadline = time.monotonic() + BUILD_DEADLINE
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Python-less root {ROOT} was still building after {BUILD_DEADLINE:.0f} s")
                time.sleep(0.5)  # polling a lock the builder holds; nothing to wake us
        if not Path(ROOT, ".vmctl-ci-root").exists():
            log = os.environ.get("VMCTL_NOPYTHON_LOG", "")
            tail = Path(log).read_text(errors="replace")[-3000:] if log and Path(log).exists() else ""
            pytest.fail(f"no Python-less root at {ROOT} (build it: .ci/nopython-root)\n{tail}")
        yield ROOT


class RootedPeer(BoincPeer):
    """A BoincPeer whose client runs inside the Python-less root."""

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(ENTER), ROOT, str(self.root), "--", "boinc", "--dir", str(self.data),
                 "--gui_rpc_port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()

    def _port_owner(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the rooted client exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        ours = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        holders = {
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
        }
        return "ours" if holders & ours else ("taken" if holders - {None} else None)


def progress(slot: Path) -> int:
    try:
        return int((slot / "shared" / "progress").read_text().strip().split(".")[-1])
    except (FileNotFoundError, ValueError):
        return 0


def test_a_task_runs_suspends_survives_a_client_restart_and_completes_without_python(
    tmp_path: Path, guest: TestGuest, built_root: str
) -> None:
    assert subprocess.run(["chroot", ROOT, "sh", "-c", "command -v python3"], check=False).returncode != 0
    out = package(tmp_path, guest)
    task = Task("wu_0", output="result")
    peer = RootedPeer(tmp_path / "peer", {}, [task], checkpoint_period=3, app_dir=out).build()
    slot = peer.slot()
    try:
        peer.allowed_exits[task.result] = 0
        peer.start()
        peer.wait_for(lambda: progress(slot) > 0, 120, "the guest's job to report progress")

        peer.task_op(task, "suspend")
        peer.wait_for(lambda: peer.info(task).get("active_task_state") == "SUSPENDED", 20, "the task to suspend")
        paused_at = progress(slot)
        peer.task_op(task, "resume")
        peer.wait_for(lambda: progress(slot) > paused_at, 30, "the guest to continue after the resume")

        before = progress(slot)
        peer.quit()
        peer.allowed_exits[task.result] = len(peer.app_exits(task))
        peer.start()
        peer.wait_for(lambda: progress(slot) > before, 90, "the restored guest to continue its count")
        assert (slot / "vm_console.log").read_text(errors="replace").count("VMCTL-GUEST BOOT") == 1, "restored"

        peer.expect_exit(task)
        (slot / "shared" / "finish_now").write_text("go\n")
        peer.wait_for(lambda: peer.info(task).get("ready to report") == "yes", 60, "the task to finish")
        done = peer.info(task)
        assert done["exit_status"] == "0", peer.why_not_running(task)
        rounds = int((peer.project_dir / task.output_file).read_text().strip().split("=")[1])
        assert rounds > before, "no work lost across the client restart"
    finally:
        peer.close()
