"""Registers vmctl's own harnesses (``harness_*.py``, each with a module-level ``HARNESSES`` list)
with the contract suite's pytest plugin (vmctl.testing.plugin).

They live here, not in the backend packages, because they need what only the source tree has:
the simulators under tests/simulators, vcsim, tests/services.py. ``--vmctl-backend=qemu,memory``
(or ``VMCTL_CONTRACT=qemu,memory``) limits the run to those harnesses; a harness that is
requested but cannot set up fails the run: it is never skipped silently.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from vmctl.testing import Harness

_HERE = Path(__file__).parent


def _harness_classes() -> list[type[Harness]]:
    found: list[type[Harness]] = []
    for module_file in sorted(_HERE.glob("harness_*.py")):
        module = importlib.import_module(f"tests.contract.{module_file.stem}")
        found += getattr(module, "HARNESSES", [])
    return found


HARNESS_CLASSES = _harness_classes()


@pytest.hookimpl(optionalhook=True)
def pytest_vmctl_harnesses(config: pytest.Config) -> list[type[Harness]]:
    return HARNESS_CLASSES


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("vmctl"):
        raise pytest.UsageError(
            "vmctl's pytest plugin is not registered: reinstall vmctl (pip install -e .) so that its "
            "pytest11 entry point is installed, or do not disable it with -p no:vmctl"
        )
