"""What vmctl's pytest plugin does to a project that does not ask for the contract suite (nothing
but its option, markers and fixtures), and the usage errors it gives when asked wrongly.

Each case is a pytest run in a fresh project directory, in a subprocess of this environment
(where the plugin is installed and no harness is registered by entry point).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFTEST = """
import pytest

@pytest.fixture
def harness():
    return "mine"
"""

TEST = """
def test_uses_its_own_harness(harness):
    assert harness == "mine"
"""


def pytest_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VMCTL_CONTRACT", "PYTEST_ADDOPTS")}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def make_project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_plain.py").write_text(TEST)
    return tmp_path


def test_an_ordinary_run_keeps_its_own_tests_and_fixtures(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    listed = pytest_run(project, "--collect-only", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [line for line in listed.stdout.splitlines() if "::" in line] == ["test_plain.py::test_uses_its_own_harness"]
    ran = pytest_run(project, "-v")
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr
    assert "plugins:" in ran.stdout and "vmctl-" in ran.stdout, "the plugin was not loaded: reinstall vmctl"
    assert "vmctl contract" not in ran.stdout


def test_the_option_is_documented_in_help(tmp_path: Path) -> None:
    out = pytest_run(make_project(tmp_path), "--help")
    assert "--vmctl-backend=NAME" in out.stdout


def test_a_backend_name_with_no_harness_is_a_usage_error(tmp_path: Path) -> None:
    out = pytest_run(make_project(tmp_path), "--vmctl-backend=nosuchbackend")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "--vmctl-backend names no registered harness: nosuchbackend (registered: none)" in out.stderr


def test_naming_the_suite_with_no_harness_registered_is_a_usage_error(tmp_path: Path) -> None:
    out = pytest_run(make_project(tmp_path), "--pyargs", "vmctl.testing.contract")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "the vmctl contract suite was asked for but no harness is registered" in out.stderr
