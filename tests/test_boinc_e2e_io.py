"""What reaches the real BOINC client from a running task (issue 14): the web graphics URL and the
remote desktop address the Manager's buttons use, trickle-ups and an intermediate upload. The VM
is the test guest on QEMU (TCG); the test writes the guest's files into the shared directory.

Without a project server the client cannot deliver a trickle or finish an upload; what it does
observably is asserted instead: it logs each message (``app_msg_receive``), moves the trickle
into the project directory as ``trickle_up_<result>_<time>.xml`` (what its next scheduler request
sends), deletes the upload request file once it has checked the output file, and shows the
graphics fields in its GUI RPC replies.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest

from .boinc_peer import BoincPeer, Task, boinc_available
from .test_boinc_e2e import Watch, alive

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available())),
]


@pytest.fixture
def cleanup() -> Iterator[list[BoincPeer | Watch]]:
    """Quit/kill the client, then kill any VM process a failed test left."""
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


VM = "boinc-wu_0_0"


def throttle(watch: Watch) -> str | None:
    """How QEMU is capped: "duty N" (the duty-cycling process's percent) or "cgroup <cpu.max>"."""
    try:
        how = json.loads((watch.slot / "vm" / VM / "throttle.json").read_text())
    except (OSError, ValueError):
        return None
    if "cgroup" in how:
        return "cgroup " + (Path(how["cgroup"]) / "cpu.max").read_text().strip()
    try:
        cmdline = psutil.Process(how["cycler_pid"]).cmdline()
    except (KeyError, psutil.Error):
        return None
    return f"duty {cmdline[cmdline.index('--percent') + 1]}"


def job_toml(guest: TestGuest) -> str:
    return f"""\
backend = "qemu"
image = "disk.qcow2"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "{guest.cmdline} vmctl.share=shared"
memory_mib = 128
network = true
shared_dir = true
web_graphics_guest_port = 80
remote_desktop = true
apply_cpu_usage_limit = true
trickle_trigger_files = ["trickle"]
intermediate_upload_files = ["partial"]

[backend_options]
accel = "tcg"

[[port_forward]]
guest_port = 80
"""


def test_graphics_trickles_and_an_intermediate_upload_reach_the_client(
    tmp_path: Path, cleanup: list[BoincPeer | Watch]
) -> None:
    guest = ensure_test_guest()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "job.toml").write_text(job_toml(guest))
    files = {
        "vmctl_job.toml": tmp_path / "job.toml",
        "disk.qcow2": guest.disk,
        "vmlinuz": guest.kernel,
        "initrd.img": guest.initrd,
    }
    task = Task("wu_0", output="partial")
    # A vbox plan class: the client leaves CPU throttling to the app, as it does for vboxwrapper
    # (7.20 does not tell the app its plan class: the job says apply_cpu_usage_limit).
    # Apps at the lowest priority, as the client's default is.
    peer = BoincPeer(
        tmp_path,
        files,
        [task],
        extra_log_flags=("app_msg_receive",),
        plan_class="vbox64",
        no_priority_change=False,
        app_args="--trickle 2",  # vboxwrapper's elapsed-time trickles, every 2 s
    ).build()
    watch = Watch(peer)
    cleanup += [peer, watch]
    peer.allowed_exits[task.result] = 0
    peer.start()
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to run")
    watch.remember_processes()
    vm = watch.vm()

    # Graphics: what the Manager reads for "Show graphics" and "Show VM Console".
    assert vm.spec.network is not None
    web_port = vm.spec.network.port_forwards[0].host_port
    active = peer.wait_for(
        lambda: (a := peer.active_task(task)).get("remote_desktop_addr") and a.get("web_graphics_url") and a,
        30,
        "the graphics fields in the client's get_results",
    )
    assert active["web_graphics_url"] == f"http://localhost:{web_port}"
    address = vm.remote_desktop_address()
    assert address is not None
    rd_port = int(address.rsplit(":", 1)[1])
    assert active["remote_desktop_addr"] == f"localhost:{rd_port}"
    with socket.create_connection(("127.0.0.1", rd_port), timeout=10) as viewer:
        assert viewer.recv(12).startswith(b"RFB 003."), "a VNC server answers at the address the client shows"

    # Trickle-ups: the client takes each message and moves the file into the project directory,
    # one file per trickle (none lost to another moved in the same second).
    def trickles(variety: str) -> list[str]:
        texts = [p.read_text() for p in sorted(peer.project_dir.glob("trickle_up_wu_0_0_*.xml"))]
        return [t for t in texts if t.startswith(f"<variety>{variety}</variety>\n")]

    shared = watch.slot / "shared"
    (shared / "trickle").write_text("<progress>5</progress>\n")
    moved = peer.wait_for(lambda: trickles("trickle"), 30, "the client to take the guest's trickle")
    assert moved == ["<variety>trickle</variety>\n<progress>5</progress>\n"]
    assert "<have_new_trickle_up/>" in peer.log()
    assert not (shared / "trickle").exists()
    periodic = peer.wait_for(lambda: len(trickles("cpu_time")) >= 2 and trickles("cpu_time"), 30, "--trickle's")
    times = [float(t.split("<cpu_time>")[1].split("<")[0]) for t in periodic]
    assert times == sorted(times) and all(b - a >= 2 for a, b in itertools.pairwise(times)), times

    # An intermediate upload: the output file is filled and the client checks it (it deletes the
    # request file; an output it does not know would be "Can't find uploadable file").
    (shared / "partial").write_text("first half of the result\n")
    peer.wait_for(lambda: "<have_new_upload_file/>" in peer.log(), 30, "the client to take the upload request")
    peer.wait_for(lambda: not (watch.slot / "boinc_ufr_partial").exists(), 30, "the client to handle the request")
    assert (peer.project_dir / task.output_file).read_text() == "first half of the result\n"
    assert "Can't find uploadable file" not in peer.log()

    # The VM process runs at the app's low priority; the volunteer lowers the CPU usage limit:
    # the client rewrites init_data.xml, says <reread_app_info/>, and the VM is capped.
    qemu = psutil.Process(vm.pid)
    assert all(psutil.Process(t.id).nice() == 19 for t in qemu.threads())
    assert qemu.ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
    assert not (watch.slot / "vm" / VM / "throttle.json").exists(), "100 %: no cap"
    peer.cpu_usage_limit = 30
    peer.write_prefs()
    peer.cmd("--read_global_prefs_override")
    how = peer.wait_for(lambda: throttle(watch), 30, "the VM to be capped")
    assert how in ("duty 30", "cgroup 30000 100000"), how
    assert "CPU usage limit: 30%" in (watch.slot / "stderr.txt").read_text()

    # Abort: nothing is left behind (the quicker end for the test).
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    peer.expect_exit(task)
    peer.task_op(task, "abort")
    peer.wait_for(lambda: peer.info(task).get("state") == "aborted", 30, "the abort")
    peer.wait_for(lambda: not any(alive(p) for p in watch.procs | {adapter}), 20, "the processes to end")
