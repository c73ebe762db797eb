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


ISO_MARK = "BOINC2DOCKER-ISO"
# the guest's side of a boinc2docker job, standing in for boot2docker: its CD-ROM and cache
# disk (the only disk: /dev/vda), then the completion trigger
BOINC2DOCKER_RUN_SH = f"""\
media load shared sr0 vda || true
media list
echo "VMCTL-GUEST CDROM $(dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | head -c {len(ISO_MARK)})"
echo CACHE-WRITTEN-BY-GUEST | dd of=/dev/vda bs=512 seek=1 conv=notrunc 2>/dev/null
sync
echo done > /tmp/trigger && share put shared /tmp/trigger completion_trigger_file
"""


def test_boinc2docker_gets_its_iso_and_cache_disk_and_completes(
    tmp_path: Path, guest: TestGuest, tasks: list[QemuTask]
) -> None:
    """boinc2docker's x86_64 app version (Cosmology@home): the ISO as the VM's CD-ROM (no disk
    image), vm_cache.vdi (a real VDI) as its disk, written in the slot's own copy; the guest
    reads the one and writes the other, then writes the completion trigger."""
    import subprocess

    task = QemuTask(
        tmp_path, guest, (JOBS / "boinc2docker_x86_64.xml").read_text(), image="unused.vdi", open_name="unused.vdi"
    )
    tasks.append(task)
    iso = task.project / "vm_isocontext_1.iso"
    iso.write_bytes(ISO_MARK.encode().ljust(2048 * 8, b"\0"))
    task.link("vm_isocontext.iso", iso.name)
    raw = tmp_path / "cache.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vdi", str(raw), str(task.project / "vm_cache.vdi")], check=True
    )
    task.link("vm_cache.vdi", "vm_cache.vdi")
    (task.slot / "shared").mkdir()
    (task.slot / "shared" / "run.sh").write_text(BOINC2DOCKER_RUN_SH)
    assert guest.media_modules is not None
    shutil.copyfile(guest.media_modules, task.slot / "shared" / "media-modules.tar")

    task.start()
    vm = task.hv().machine(VM)
    spec = vm.spec
    assert spec.disk is None and spec.cdrom == iso, "the ISO, not a disk image, as vboxwrapper attaches it"
    own = task.slot / "vmctl_vm_cache.vdi"
    assert spec.extra_disks == (own,) and spec.memory_mib == 1024 and spec.network is not None
    assert set(spec.shared_dirs) == {"shared", "scratch"}

    assert task.run_to_exit(120) == 0, task.console()[-2000:]
    console = task.console()
    assert "VMCTL-GUEST MEDIA sr0 bytes=16384 ro=1" in console, console[-2000:]
    assert "VMCTL-GUEST MEDIA vda bytes=1048576 ro=0" in console
    assert f"VMCTL-GUEST CDROM {ISO_MARK}" in console
    assert (task.slot / FINISH_FILE).read_text() == "0\n"
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vdi", "-O", "raw", str(own), str(back)], check=True)
    assert back.read_bytes()[512:534] == b"CACHE-WRITTEN-BY-GUEST", "the guest wrote the slot's cache disk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "vdi", "-O", "raw", str(task.project / "vm_cache.vdi"), str(back)], check=True
    )
    assert back.read_bytes() == raw.read_bytes(), "the project's cache disk is untouched"
