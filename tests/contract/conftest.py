"""Registers vmctl's own contract harnesses (``harness_*.py``, each with a module-level
``HARNESSES`` list) with the contract suite's pytest plugin (vmctl.testing.plugin).

The harnesses live here, not in the backend packages, because they need what only the source tree
has: the simulators under tests/simulators, vcsim, tests/services.py. They are registered by this
conftest rather than one at the root so that they never leak into another project's run of the
suite through an editable install of vmctl (pytest loads the conftests above the suite's
directory). Run them with ``pytest tests/contract``; ``--vmctl-backend=qemu,memory`` (or
``VMCTL_CONTRACT=qemu,memory``) limits a run to those. A harness that is requested but cannot set
up fails the run: it is never skipped silently.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import pytest

from vmctl.testing import Harness

CONTRACT_TESTS = Path(__file__).parent


@functools.cache
def harness_classes() -> tuple[type[Harness], ...]:
    """vmctl's harnesses, imported on first use (not in runs that need none)."""
    found: list[type[Harness]] = []
    for module_file in sorted(CONTRACT_TESTS.glob("harness_*.py")):
        module = importlib.import_module(f"tests.contract.{module_file.stem}")
        found += getattr(module, "HARNESSES", [])
    return tuple(found)


@pytest.hookimpl(optionalhook=True)
def pytest_vmctl_harnesses(config: pytest.Config) -> list[type[Harness]]:
    return list(harness_classes())


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("vmctl"):
        raise pytest.UsageError(
            "vmctl's pytest plugin is not registered: reinstall vmctl (pip install -e .) so that its "
            "pytest11 entry point is installed, or do not disable it with -p no:vmctl"
        )
