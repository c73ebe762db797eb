"""Host checks at the adapter's start: what the backend needs and the host lacks is a temporary
exit whose notice (``boinc_temporary_exit``'s third line) names the remedy, never a traceback.

In-process on the adapter's test scaffolding (a real ``boinc_mmap_file`` written by the client
double), and once through the frozen ``vmctl-boinc`` with no Python on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmctl.boinc._hostcheck import MISSING_MEMORY_DELAY, MISSING_SOFTWARE_DELAY, missing_tools
from vmctl.boinc.adapter import default_connect
from vmctl.boinc.hostconfig import CONFIG_ENV, Profile
from vmctl.boinc.slot import TEMPORARY_EXIT_FILE

from .bundle_build import frozen_vmctl_boinc, no_python_env
from .test_boinc_adapter import Env, make_env

QEMU_JOB = 'backend = "qemu"\nimage = "vm_image.img"\nmemory_mib = 256\n'


def temporary_exit(env: Env) -> tuple[int, str, list[str]]:
    """(delay, reason, the lines after it) of the run's boinc_temporary_exit."""
    delay, reason, *rest = (env.slot / TEMPORARY_EXIT_FILE).read_text().splitlines()
    return int(delay), reason, rest


def test_an_absent_qemu_binary_is_a_notice_naming_the_package(tmp_path: Path) -> None:
    with make_env(tmp_path) as env:
        env.write_job(text=QEMU_JOB)
        profile = Profile("qemu", "qemu", {"qemu_binary": str(tmp_path / "no" / "qemu-system-x86_64")})
        adapter = env.adapter(connect=default_connect, profile=profile)
        assert adapter.start() == 0
        delay, reason, rest = temporary_exit(env)
    assert delay == MISSING_SOFTWARE_DELAY
    assert "apt-get install qemu-system-x86" in reason and "dnf install qemu-system-x86-core" in reason
    assert rest == ["notice"]
    assert not (env.slot / "vm").exists()  # nothing was created


def test_a_vm_larger_than_the_free_memory_waits_with_a_notice(tmp_path: Path) -> None:
    with make_env(tmp_path) as env:
        env.write_job(extra="memory_mib = 1048576")  # 1 TiB, on the memory backend
        adapter = env.adapter()
        assert adapter.start() == 0
        delay, reason, rest = temporary_exit(env)
        assert delay == MISSING_MEMORY_DELAY
        assert reason.startswith("not enough free memory for the VM: it needs 1048640 MiB")
        assert rest == ["notice"]
        assert env.vm().state.value == "stopped"  # created, never started


def test_virtualbox_missing_names_where_to_get_it(tmp_path: Path) -> None:
    with make_env(tmp_path) as env:
        env.write_job(text='backend = "vbox"\nimage = "vm_image.img"\n')
        adapter = env.adapter(connect=default_connect, profile=Profile("vbox", "virtualbox", {}))
        assert adapter.start() == 0
        _, reason, rest = temporary_exit(env)
    assert "virtualbox.org" in reason
    assert rest == ["notice"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_user_outside_the_kvm_group_is_told_to_join_it() -> None:
    # As nobody, with no supplementary groups: the position of the boinc user before
    # `usermod -aG kvm boinc`.
    code = "from vmctl.boinc._hostcheck import missing_tools; print(missing_tools('qemu', {'accel': 'kvm'}))"
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if os.path.exists("/dev/kvm"):
        group = Path("/dev/kvm").group()
        assert f"add it to the {group} group (sudo usermod -aG {group} nobody)" in done.stdout
    else:
        assert "/dev/kvm is missing" in done.stdout
    # ... while accel=tcg needs no KVM at all.
    assert not any("kvm" in p for p in missing_tools("qemu", {"accel": "tcg"}))


def test_the_frozen_adapter_gives_the_same_notice_without_python(tmp_path: Path) -> None:
    config = tmp_path / "boinc.toml"
    config.write_text('[profiles.qemu]\nbackend = "qemu"\noptions = { qemu_binary = "qemu-system-nowhere" }\n')
    config.chmod(0o600)
    with make_env(tmp_path) as env:
        env.write_job(text=QEMU_JOB)
        done = subprocess.run(
            [str(frozen_vmctl_boinc())],
            cwd=env.slot,
            env=no_python_env(**{CONFIG_ENV: str(config)}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        delay, reason, rest = temporary_exit(env)
    assert delay == MISSING_SOFTWARE_DELAY
    assert "Traceback" not in done.stderr
    assert "QEMU (qemu-system-nowhere) is not installed" in reason
    assert rest == ["notice"]
