"""The hook the plugin adds to pytest, for harnesses that are not installed as entry points."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from vmctl.testing._harness import Harness


@pytest.hookspec
def pytest_vmctl_harnesses(config: pytest.Config) -> Iterable[type[Harness]]:  # type: ignore[empty-body]
    """Return harness classes to register besides the ``vmctl.harnesses`` entry points.

    Implement it in a ``conftest.py`` for harnesses that live in a test tree (vmctl's own do, in
    ``tests/contract/``, because they need the simulators under ``tests/``)::

        def pytest_vmctl_harnesses(config):
            return [MyHarness]
    """
