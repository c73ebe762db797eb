"""Runs every test in this directory once per backend harness.

Harnesses are found in ``harness_*.py`` modules (each defines ``HARNESSES``, a list of Harness
classes). ``VMCTL_CONTRACT=qemu,memory`` limits the run to those harness ids. A harness that is
requested but cannot set up fails the run: it is never skipped silently.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmctl

from .harness import Harness

_HERE = Path(__file__).parent


def _harness_classes() -> dict[str, type[Harness]]:
    found: dict[str, type[Harness]] = {}
    for module_file in sorted(_HERE.glob("harness_*.py")):
        module = importlib.import_module(f"tests.contract.{module_file.stem}")
        for cls in getattr(module, "HARNESSES", []):
            found[cls.id] = cls
    wanted = os.environ.get("VMCTL_CONTRACT")
    if wanted:
        ids = [w.strip() for w in wanted.split(",") if w.strip()]
        missing = set(ids) - set(found)
        if missing:
            raise pytest.UsageError(f"VMCTL_CONTRACT names unknown harnesses: {sorted(missing)}")
        return {i: found[i] for i in ids}
    return found


HARNESS_CLASSES = _harness_classes()


_NO_HARNESS: set[str] = set()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("needs")
    ids = list(HARNESS_CLASSES)
    if marker is not None:
        ids = [i for i in ids if all(getattr(HARNESS_CLASSES[i], attr) for attr in marker.args)]
    if not ids:
        _NO_HARNESS.add(metafunc.definition.nodeid)
        return
    metafunc.parametrize("harness", ids, indirect=True, scope="session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*attrs): only for harnesses whose attributes are all true")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = [item for item in items if item.nodeid not in _NO_HARNESS]
    dropped = [item for item in items if item.nodeid in _NO_HARNESS]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


_instances: dict[str, Harness] = {}


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    hid = request.param
    if hid not in _instances:
        h = HARNESS_CLASSES[hid]()
        h.setup(tmp_path_factory.mktemp(f"harness-{hid}"))
        _instances[hid] = h
        request.session.config.add_cleanup(h.teardown)
    yield _instances[hid]


@pytest.fixture
def hv(harness: Harness) -> vmctl.Hypervisor:
    return harness.connect()


_counter = itertools.count(1)


@pytest.fixture
def make_vm(harness: Harness, hv: vmctl.Hypervisor) -> Iterator[Callable[..., vmctl.Machine]]:
    """Create machines with unique names; destroy them after the test whatever happened."""
    made: list[str] = []

    def make(network: bool = False, ignore_power_button: bool = False) -> vmctl.Machine:
        name = f"ct{os.getpid() % 10000}-{next(_counter)}"
        vm = hv.create(harness.spec(name, network=network, ignore_power_button=ignore_power_button))
        made.append(name)
        return vm

    yield make
    for name in made:
        try:
            hv.machine(name).destroy()
        except vmctl.MachineNotFound:
            pass
