"""Diagnosis on errors (issue 14): a task that ends in error leaves the VM's screen in the slot
(``vm_screenshot.png``) and the hypervisor's log tail in stderr.txt: end to end through the
adapter on real QEMU with the test guest; the screen and log of a libvirt domain (real libvirtd)
and of a VirtualBox VM (the VBoxManage simulator); the best-effort rules on the in-memory
backend."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.contract.harness_libvirt import load_services, readable_test_guest
from tests.test_boinc_adapter import Env, make_env, started
from tests.test_virtualbox_quirks import Sim, sim  # noqa: F401 (the fixture)
from vmctl.boinc._diagnosis import LOG_TAIL_LINES, SCREENSHOT_FILE, diagnose, hypervisor_log_tail
from vmctl.boinc.adapter import Adapter
from vmctl.boinc.initdata import read_init_data
from vmctl.boinc.job import find_job_file, load_job
from vmctl.boinc.shm import open_shared_memory
from vmctl.boinc.slot import FINISH_FILE, Slot
from vmctl.boinc.testing import FakeClient
from vmctl.testguest import ensure_test_guest
from vmctl.testing._png import colours

#: The guest's job fails: the completion trigger with exit code 3.
FAILING_RUN_SH = 'echo 3 > /run/done\nshare put "$VMCTL_SHARE_TAG" /run/done done\n'


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        yield e


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_failing_task_on_qemu_leaves_the_screen_and_qemus_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guest = ensure_test_guest()
    boinc_dir = tmp_path / "boinc"
    project, slot_dir = boinc_dir / "projects" / "p", boinc_dir / "slots" / "0"
    project.mkdir(parents=True)
    slot_dir.mkdir(parents=True)
    files = {"vmlinuz": guest.kernel, "initrd.img": guest.initrd}
    for name, source in files.items():
        os.link(source, project / name)
    (project / "run.sh").write_text(FAILING_RUN_SH)
    (project / "job.toml").write_text(
        f'backend = "qemu"\nkernel = "vmlinuz"\ninitrd = "initrd.img"\n'
        f'cmdline = "{guest.cmdline} vmctl.share=shared"\nmemory_mib = 128\nshared_dir = true\n'
        'copy_to_shared = ["run.sh"]\ncompletion_trigger_file = "done"\n[backend_options]\naccel = "tcg"\n'
    )
    links = {"vmctl_job.toml": "job.toml", "run.sh": "run.sh", **{n: n for n in files}}
    for open_name, physical in links.items():
        (slot_dir / open_name).write_text(f"<soft_link>../../projects/p/{physical}</soft_link>\n")
    client = FakeClient(slot_dir, project_dir=str(project), boinc_dir=str(boinc_dir))
    caplog.set_level(logging.INFO, logger="vmctl.boinc")
    try:
        data = read_init_data(slot_dir)
        adapter = Adapter(
            Slot(slot_dir),
            data,
            load_job(find_job_file(slot_dir)),
            open_shared_memory(slot_dir, data.shm_key),
            reap_at_start=False,
        )
        code = adapter.start()
        deadline = time.monotonic() + 150
        tick = 0
        while code is None:
            assert time.monotonic() < deadline, "the task did not end: the adapter hangs"
            if tick % 10 == 0:
                client.heartbeat()
            client.poll()
            code = adapter.step()
            tick += 1
            time.sleep(0.1)
    finally:
        client.close()
        with contextlib.suppress(vmctl.VmctlError):
            for vm in vmctl.connect("qemu", state_dir=slot_dir / "vm").machines():
                vm.destroy()
    assert code == 3, "the guest's exit code ends the task"
    assert (slot_dir / FINISH_FILE).read_text().startswith("3\n")
    shot = vmctl.Screenshot((slot_dir / SCREENSHOT_FILE).read_bytes())
    assert (shot.width, shot.height) == (720, 400)  # VGA text mode
    assert colours(shot.png) > 1, "the screen shows the firmware's text"
    said = caplog.text
    assert "last lines of the hypervisor's log" in said
    tail = said.split("last lines of the hypervisor's log:", 1)[1]
    assert "qemu-system" in tail or "run " in tail, tail[:400]  # the keeper's line naming QEMU's command


def test_diagnosis_is_bounded_and_best_effort(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmctl.boinc")
    started(env)
    vm = env.vm()
    diagnose(vm, env.slot)
    assert vmctl.Screenshot((env.slot / SCREENSHOT_FILE).read_bytes()).width > 0
    # a link planted where the screenshot goes is replaced, never followed
    victim = env.slot.parent / "victim"
    victim.write_text("keep")
    (env.slot / SCREENSHOT_FILE).unlink()
    (env.slot / SCREENSHOT_FILE).symlink_to(victim)
    diagnose(vm, env.slot)
    assert victim.read_text() == "keep" and not (env.slot / SCREENSHOT_FILE).is_symlink()
    # a stopped VM has no screen: said, not raised
    vm.poweroff()
    (env.slot / SCREENSHOT_FILE).unlink()
    diagnose(vm, env.slot)
    assert not (env.slot / SCREENSHOT_FILE).exists()
    assert "no screenshot of the VM" in caplog.text
    diagnose(None, env.slot)


class _Logged:
    """A machine whose backend keeps a hypervisor log (as QEMU's ``hypervisor_log``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.asked: list[int] = []

    def hypervisor_log(self, max_bytes: int) -> str:
        self.asked.append(max_bytes)
        return self.text[-max_bytes:]


def test_the_log_tail_is_the_last_lines_and_at_most_8_kib() -> None:
    lines = [f"line {i}" for i in range(1000)]
    machine = _Logged("\n".join(lines))
    tail = hypervisor_log_tail(machine)  # type: ignore[arg-type]
    assert tail == lines[-LOG_TAIL_LINES:]
    assert machine.asked == [8192]
    long_line = _Logged("x" * 20000 + "\nlast\n")
    assert hypervisor_log_tail(long_line) == ["last"]  # type: ignore[arg-type]


def test_on_virtualbox_the_screen_and_vbox_log(sim: Sim, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    """The VBoxManage simulator: ``controlvm screenshotpng`` and the VM's ``Logs/VBox.log``."""
    vm = sim.hv.create(sim.spec("diag1"))
    vm.start()
    slot = tmp_path / "slot"
    slot.mkdir()
    diagnose(vm, slot)
    shot = vmctl.Screenshot((slot / SCREENSHOT_FILE).read_bytes())
    assert (shot.width, shot.height) == (720, 400)
    assert any("Process ID:" in line for line in hypervisor_log_tail(vm))
    vm.poweroff()


def test_on_libvirt_the_screen_and_libvirts_qemu_log(tmp_path: Path) -> None:
    """A real libvirtd (``qemu:///system``): ``virDomainScreenshot`` and libvirt's log of the
    domain's QEMU (the command line it started)."""
    load_services().ensure_libvirtd()
    kernel, initrd, disk, cmdline = readable_test_guest()
    hv = vmctl.connect("libvirt", uri="qemu:///system", state_dir=Path("/var/lib/libvirt/images/vmctl"))
    name = f"vmctl-diag-{os.getpid()}"
    vm = hv.create(vmctl.MachineSpec(name=name, disk=disk, kernel=kernel, initrd=initrd, cmdline=cmdline))
    try:
        vm.start()
        slot = tmp_path / "slot"
        slot.mkdir()
        diagnose(vm, slot)
        assert vmctl.Screenshot((slot / SCREENSHOT_FILE).read_bytes()).width >= 640
        assert any("qemu-system" in line or "-name" in line for line in hypervisor_log_tail(vm))
    finally:
        vm.destroy()
