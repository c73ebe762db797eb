"""The frozen ``vmctl-boinc`` (``vmctl-boinc bundle``) runs without Python and finds its backends.

One build per session (tests/bundle_build.py); the build's time is printed on stderr.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import vmctl
from vmctl.boinc.__main__ import main

from .bundle_build import frozen_vmctl_boinc, no_python_env


def run_frozen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(frozen_vmctl_boinc()), *args], env=no_python_env(), capture_output=True, text=True, timeout=60
    )


def test_the_bundle_reports_its_version_with_no_python_on_path() -> None:
    done = run_frozen("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vmctl-boinc {vmctl.__version__}"


def test_the_bundled_backends_resolve_through_their_entry_points() -> None:
    done = run_frozen("--backends")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    # Entry points live in the vmctl distribution's metadata: without it the list would be empty.
    assert lines["qemu"] == "usable"
    assert lines["memory"] == "usable"
    assert lines["libvirt"] == "usable"  # libvirt-python and libvirt.so travel in the bundle
    # VirtualBox's Python side loaded: it reports VirtualBox itself missing, not its plug-in.
    assert lines["virtualbox"].startswith("unusable")
    assert "plug-in failed to load" not in lines["virtualbox"]
    assert "VirtualBox" in lines["virtualbox"]


def test_the_bundled_adapter_refuses_a_slot_without_init_data(tmp_path: Path) -> None:
    done = run_frozen("--verbose", "--slot", str(tmp_path))
    # No init_data.xml in the slot: the adapter's own clear refusal, from inside the bundle.
    assert done.returncode != 0
    assert "init_data.xml" in done.stderr
    assert "Traceback" not in done.stderr


def test_bundle_without_out_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bundle"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
