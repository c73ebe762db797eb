"""The contract suite is a product: a backend package outside vmctl's tree installs itself into a
fresh virtual environment and passes the suite with ``pytest --vmctl-backend=example``.

The package is tests/example_backend (its own pyproject.toml; its backend and its harness are
registered by entry point). The virtual environment sees this test's own environment (pytest,
vmctl and their dependencies) through a ``.pth`` file, and gets the example installed by pip
into its own site-packages, as a third party's CI would.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "example_backend"


def make_venv(path: Path) -> Path:
    """A virtual environment layered over this one; returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    lower = "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages())
    (Path(purelib) / "_lower_layer.pth").write_text(f"import site; {lower}\n")
    return python


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VMCTL_CONTRACT", "PYTEST_ADDOPTS", "PYTHONPATH")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_example_backend_passes_the_shipped_contract_suite(tmp_path: Path) -> None:
    assert "vmctl" in {ep.name for ep in entry_points(group="pytest11")}, "reinstall vmctl: pip install -e ."
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    python = make_venv(tmp_path / "venv")

    install = run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(project)], tmp_path, 600)
    assert install.returncode == 0, install.stdout + install.stderr
    where = run([str(python), "-c", "import vmctl_example; print(vmctl_example.__file__)"], tmp_path, 60)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr

    report = tmp_path / "report.xml"
    argv = [str(python), "-m", "pytest", "--vmctl-backend=example", "-p", "no:cacheprovider", f"--junitxml={report}"]
    result = run(argv, project, 600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "vmctl contract: --vmctl-backend=example; suite added" in result.stdout

    cases = ET.parse(report).getroot().iter("testcase")  # noqa: S314 - the report pytest just wrote
    outcomes = {(case.get("classname", ""), case.get("name", "")): [c.tag for c in case] for case in cases}
    assert all(tags == [] or set(tags) <= {"system-out", "system-err"} for tags in outcomes.values()), outcomes
    contract = [name for (cls, name) in outcomes if cls.startswith("test_contract_")]
    own = [name for (cls, name) in outcomes if cls.startswith("tests.test_example")]
    assert len(contract) > 0 and all(name.endswith("[example]") for name in contract), outcomes
    assert "test_stop_forces_off_a_guest_that_ignores_the_button[example]" in contract
    modules = {cls for (cls, _) in outcomes if cls.startswith("test_contract_")}
    assert {"test_contract_definition", "test_contract_running", "test_contract_power"} <= modules, modules
    assert sorted(own) == ["test_machines_belong_to_their_connection[example]", "test_the_backend_is_installed"]
