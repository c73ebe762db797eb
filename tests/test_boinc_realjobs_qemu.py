"""Two real projects' jobs end to end on QEMU (TCG), the test guest standing in for the project's
image: BOINC's samples/worker job (its multiattach image found in the project directory under
its physical name while the slot holds the logical one) and LHC@home's CMS template (its
job_duration ends the task successfully; its pf_host_port is a free port the VM listens on).

The guest boots by direct kernel boot (the test guest has no boot loader on its disk): the job's
kernel, initrd and command line are the only things added to what the project's file says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl.boinc.adapter import Adapter
from vmctl.boinc.hostconfig import Profile
from vmctl.boinc.initdata import read_init_data
from vmctl.boinc.job import find_job_file, load_job
from vmctl.boinc.shm import open_shared_memory
from vmctl.boinc.slot import FINISH_FILE, Slot
from vmctl.boinc.testing import FakeClient
from vmctl.testguest import TestGuest, ensure_test_guest

pytestmark = [pytest.mark.slow]

JOBS = Path(__file__).parent / "realworld" / "jobs"
VM = "boinc-wu_0_0"
TCG = Profile("qemu", "qemu", {"accel": "tcg"})


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


class QemuTask:
    """A BOINC data directory holding one project and one slot laid out as the client lays out a
    vbox app version, the client's double, and the adapter running the task's VM on QEMU."""

    def __init__(self, root: Path, guest: TestGuest, job_text: str, image: str, open_name: str) -> None:
        self.guest = guest
        self.boinc_dir = root / "boinc"
        self.project = self.boinc_dir / "projects" / "p"
        self.slot = self.boinc_dir / "slots" / "0"
        self.project.mkdir(parents=True)
        self.slot.mkdir(parents=True)
        self.add("vbox_job.xml", "vbox_job_1.xml", job_text.encode())
        # the image without copy_file: the project's file under its physical name, a link in the slot
        shutil.copyfile(guest.disk, self.project / image)
        self.link(open_name, image)
        for name, source in (("vmlinuz", guest.kernel), ("initrd.img", guest.initrd)):
            shutil.copyfile(source, self.project / name)
            self.link(name, name)
        self.client = FakeClient(self.slot, project_dir=str(self.project), boinc_dir=str(self.boinc_dir))
        self.adapter: Adapter | None = None

    def link(self, open_name: str, physical: str) -> None:
        (self.slot / open_name).write_text(f"<soft_link>../../projects/p/{physical}</soft_link>\n")

    def add(self, open_name: str, physical: str, data: bytes) -> None:
        (self.project / physical).write_bytes(data)
        self.link(open_name, physical)

    def start(self) -> Adapter:
        init = read_init_data(self.slot)
        job = load_job(find_job_file(self.slot, self.project))
        # the test guest stands in for the project's image: a direct kernel boot, its shares by tag
        job = dataclasses.replace(
            job, kernel="vmlinuz", initrd="initrd.img", cmdline=f"{self.guest.cmdline} vmctl.share=shared"
        )
        self.adapter = Adapter(Slot(self.slot), init, job, open_shared_memory(self.slot, init.shm_key), profile=TCG)
        assert self.adapter.start() is None
        return self.adapter

    def step(self, beat: list[float]) -> int | None:
        assert self.adapter is not None
        if time.monotonic() - beat[0] >= 1.0:
            self.client.heartbeat()
            beat[0] = time.monotonic()
        self.client.poll()
        code = self.adapter.step()
        time.sleep(0.1)
        return code

    def run_until(self, done: object, timeout: float, what: str) -> None:
        deadline, beat = time.monotonic() + timeout, [0.0]
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            assert self.step(beat) is None, f"the adapter exited while waiting for {what}"

    def run_to_exit(self, timeout: float) -> int:
        deadline, beat = time.monotonic() + timeout, [0.0]
        while True:
            assert time.monotonic() < deadline, f"the adapter did not exit within {timeout} s"
            code = self.step(beat)
            if code is not None:
                return code

    def console(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.slot / "vm_console.log").read_text(errors="replace")
        return ""

    def hv(self) -> vmctl.Hypervisor:
        return vmctl.connect("qemu", state_dir=self.slot / "vm", accel="tcg")

    def close(self) -> None:
        if (self.slot / "vm").exists():
            hv = self.hv()
            for vm in hv.machines():
                with contextlib.suppress(vmctl.VmctlError):
                    vm.destroy()
        self.client.close()


@pytest.fixture
def tasks() -> Iterator[list[QemuTask]]:
    made: list[QemuTask] = []
    try:
        yield made
    finally:
        for task in made:
            task.close()


def test_the_worker_sample_runs_from_its_project_image_to_completion(
    tmp_path: Path, guest: TestGuest, tasks: list[QemuTask]
) -> None:
    task = QemuTask(
        tmp_path,
        guest,
        (JOBS / "boinc_samples_worker.xml").read_text(),
        image="vm_image_x64_1.vdi",
        open_name="vm_image.vdi",  # samples/worker/vm_version.xml's logical name
    )
    tasks.append(task)
    task.start()
    vm = task.hv().machine(VM)
    assert vm.state is vmctl.State.RUNNING
    spec = vm.spec
    assert spec.disk == task.project / "vm_image_x64_1.vdi" and spec.overlay
    assert spec.memory_mib == 512 and spec.cpus == 1
    assert spec.shared_dirs == {"shared": task.slot / "shared", "project": task.project}
    assert spec.readonly_shares == frozenset({"project"})
    task.run_until(lambda: "VMCTL-GUEST READY" in task.console(), 120, "the guest to boot")
    assert (task.project / "vm_image_x64_1.vdi").read_bytes() == guest.disk.read_bytes(), "the base is untouched"

    # the worker job ends with the guest powering itself off (poweroff_completes)
    vm.stop(timeout=0)
    assert task.run_to_exit(120) == 0
    assert (task.slot / FINISH_FILE).read_text() == "0\n"
    assert task.hv().machines() == []


def test_the_cms_template_ends_at_its_job_duration_with_a_free_port(
    tmp_path: Path, guest: TestGuest, tasks: list[QemuTask]
) -> None:
    text = re.sub(
        r"<job_duration>\d+</job_duration>", "<job_duration>25</job_duration>", (JOBS / "lhcathome_cms.xml").read_text()
    )
    task = QemuTask(tmp_path, guest, text, image="CMS.vdi", open_name="CMS.vdi")
    tasks.append(task)
    task.start()
    vm = task.hv().machine(VM)
    spec = vm.spec
    assert spec.disk == task.project / "CMS.vdi" and spec.memory_mib == 2048
    assert spec.network is not None
    (pf,) = spec.network.port_forwards
    assert pf.guest_port == 80 and pf.host_port != 7859
    with socket.create_connection(("127.0.0.1", pf.host_port), timeout=10):
        pass  # the VM's forward listens on the picked port
    assert (task.slot / "shared" / "init_data.xml").is_file(), "copy_to_shared"
    task.run_until(lambda: "VMCTL-GUEST READY" in task.console(), 120, "the guest to boot")
    assert vm.state is vmctl.State.RUNNING, "runs on before its duration"

    assert task.run_to_exit(120) == 0
    assert task.adapter is not None and task.adapter.elapsed() >= 25, "ended at its duration, not before"
    assert (task.slot / FINISH_FILE).read_text() == "0\n"
    assert task.hv().machines() == [], "powered off and deleted, as vboxwrapper's cleanup()"
