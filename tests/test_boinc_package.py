"""``vmctl-boinc package``: the app version it writes is what the real BOINC client accepts and
runs, with the frozen ``vmctl-boinc`` as the main program (no ``python -m vmctl.boinc`` anywhere).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.boinc.package import API_VERSION, PackageError, write_app_version
from vmctl.testguest import TestGuest

from .boinc_peer import APP, BoincPeer, Task, boinc_available
from .bundle_build import frozen_vmctl_boinc
from .test_boinc_e2e import RUN_SH, Watch, alive, cleanup, guest, job_toml

__all__ = ["cleanup", "guest"]  # the fixtures this module borrows


def package(tmp_path: Path, guest: TestGuest) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.toml").write_text(job_toml(guest))
    (src / "run.sh").write_text(RUN_SH)
    out = tmp_path / "app_version"
    argv = [sys.executable, "-m", "vmctl.boinc", "package", "--job", str(src / "job.toml"), "--image", str(guest.disk)]
    for name, path in (("vmlinuz", guest.kernel), ("initrd.img", guest.initrd), ("run.sh", src / "run.sh")):
        argv += ["--file", f"{name}={path}"]
    argv += ["--bundle", str(frozen_vmctl_boinc()), "--app", APP, "--version-num", "100", "--out", str(out)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_a_job_opening_a_file_not_given_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('image = "disk.qcow2"\nkernel = "vmlinuz"\n')
    bundle = tmp_path / "vmctl-boinc"
    bundle.write_bytes(b"\x7fELF")
    with pytest.raises(PackageError, match="the job opens vmlinuz"):
        write_app_version(tmp_path / "out", job=job, bundle=bundle, files={"disk.qcow2": bundle})
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available()))
def test_the_real_client_runs_the_packaged_app_version(
    tmp_path: Path, guest: TestGuest, cleanup: list[BoincPeer | Watch]
) -> None:
    out = package(tmp_path, guest)
    main = "vmctl-boinc_100_x86_64-pc-linux-gnu"
    version = ET.parse(out / "version.xml").getroot()  # noqa: S314 (what the test itself wrote)
    assert version.findtext("api_version") == API_VERSION
    files = {f.findtext("physical_name"): f for f in version.iter("file")}
    assert files[main].find("main_program") is not None
    assert files["vmctl_job_100.toml"].findtext("logical_name") == "vmctl_job.toml"
    assert files["disk_100.qcow2"].findtext("logical_name") == "disk.qcow2"
    assert files["disk_100.qcow2"].find("gzip") is not None  # the image travels compressed
    assert files["run_100.sh"].find("gzip") is None

    task = Task("wu_0", output="result")
    peer = BoincPeer(tmp_path / "peer", {}, [task], checkpoint_period=3, app_dir=out).build()
    watch = Watch(peer)
    cleanup += [peer, watch]
    peer.allowed_exits[task.result] = 0
    peer.start()
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 90, "the VM to run")
    watch.remember_processes()
    adapter = peer.wait_for(lambda: peer.app_process(task), 20, "the running app")
    assert adapter.exe() == str(peer.project_dir / main), "the client runs the bundle itself"
    # QEMU loads the host's libraries, not those the bundle unpacked for itself.
    qemu = psutil.Process(watch.vm().pid)
    assert "_MEI" not in qemu.environ().get("LD_LIBRARY_PATH", ""), qemu.environ()
    peer.wait_for(lambda: watch.progress() > 0, 60, "the guest's job to report progress")
    peer.expect_exit(task)
    (watch.slot / "shared" / "finish_now").write_text("go\n")
    peer.wait_for(lambda: peer.info(task).get("ready to report") == "yes", 60, "the task to finish")
    done = peer.info(task)
    assert done["exit_status"] == "0" and done["state"] == "uploaded", peer.why_not_running(task)
    assert (peer.project_dir / task.output_file).read_text().startswith("rounds=")
    peer.wait_for(lambda: not any(alive(p) for p in watch.procs | {adapter}), 20, "the processes to end")
