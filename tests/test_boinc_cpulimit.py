"""The volunteer's CPU usage limit and the app's low priority (issue 14), on the in-memory backend
with the client double; the cap itself on real QEMU is tests/test_qemu_cpu_limit.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vmctl.boinc._cpulimit import CpuLimit, lower_priority
from vmctl.boinc._task import Task
from vmctl.boinc.initdata import InitData
from vmctl.boinc.job import Job
from vmctl.boinc.slot import Slot

from .test_boinc_adapter import Env, make_env, started


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        yield e


def limit_of(env: Env) -> int:
    return env.vm()._rec().cpu_limit  # the in-memory backend's record of set_cpu_limit


def test_a_vbox_plan_class_task_is_capped_at_the_limit_and_follows_its_changes(env: Env) -> None:
    env.client.write_init_data(plan_class="vbox64_mt", cpu_usage_limit=40.0)
    adapter = started(env)
    env.run(adapter, 1.1)
    assert limit_of(env) == 40, "the client does not throttle vbox* plan classes: the VM is capped"
    # The volunteer changes the preference: the client rewrites init_data.xml and says so.
    env.client.write_init_data(cpu_usage_limit=75.0)
    env.send(adapter, "<reread_app_info/>")
    env.run(adapter, 1.1)
    assert limit_of(env) == 75
    env.client.write_init_data(cpu_usage_limit=0.0)  # 0: no limit
    env.send(adapter, "<reread_app_info/>")
    env.run(adapter, 1.1)
    assert limit_of(env) == 100


def test_other_plan_classes_are_left_to_the_clients_own_throttling(env: Env) -> None:
    env.client.write_init_data(cpu_usage_limit=40.0)
    adapter = started(env)
    env.run(adapter, 2.1)
    assert limit_of(env) == 100, "capping too would throttle twice"


def sleeper_with_threads() -> subprocess.Popen[bytes]:
    """A process with four threads, as a VM's host process has several."""
    code = (
        "import threading, time\n"
        "for _ in range(3): threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "print(1, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == b"1"
    return child


def test_the_vm_process_runs_at_nice_19_and_idle_io_in_every_thread() -> None:
    child = sleeper_with_threads()
    try:
        proc = psutil.Process(child.pid)
        assert len(proc.threads()) == 4
        assert lower_priority(child.pid)
        for thread in proc.threads():
            t = psutil.Process(thread.id)
            assert t.nice() == 19, "Linux keeps a nice value per thread: every one is lowered"
            assert t.ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
    finally:
        child.kill()
        child.wait()


def test_without_a_plan_class_a_vbox_job_is_capped_as_vboxwrapper_caps_it(env: Env) -> None:
    # Clients before 8.2 (Debian's 7.20) write no plan class into init_data.xml.
    env.write_job(
        text="<vbox_job><enable_shared_directory/><completion_trigger_file>done</completion_trigger_file></vbox_job>",
        name="vbox_job.xml",
    )
    (env.slot / "vmctl_job.toml").unlink()
    (env.slot / "vm_image.vdi").write_text("<soft_link>../../projects/p/v1_base.img</soft_link>\n")
    env.client.write_init_data(cpu_usage_limit=50.0)
    adapter = started(env)
    env.run(adapter, 1.1)
    assert limit_of(env) == 50


@pytest.mark.parametrize(("setting", "expected"), [("true", 40), ("false", 100)])
def test_the_job_file_says_whether_the_app_throttles(env: Env, setting: str, expected: int) -> None:
    env.write_job(f"apply_cpu_usage_limit = {setting}")
    env.client.write_init_data(plan_class="vbox64", cpu_usage_limit=40.0)
    adapter = started(env)
    env.run(adapter, 1.1)
    assert limit_of(env) == expected


@pytest.mark.parametrize("regular", [False, True])
def test_the_volunteers_no_priority_change_is_honoured(tmp_path: Path, regular: bool) -> None:
    task = Task(Slot(tmp_path), InitData(result_name="wu_0_0", no_priority_change=regular), Job(image="disk"))
    child = sleeper_with_threads()
    try:
        CpuLimit(task).poll(None, child.pid)
        nices = {psutil.Process(t.id).nice() for t in psutil.Process(child.pid).threads()}
        assert nices == ({os.nice(0)} if regular else {19})
    finally:
        child.kill()
        child.wait()
