"""How the suite shares the machine when it runs in several processes (``pytest -n 2``).

``.ci/test`` runs the suite with pytest-xdist (``-n 2``) and the scheduler below: each test gets a
group here and a group runs whole on one worker, in collection order. The groups keep what must not
run side by side apart:

- ``libvirtd``: every test that drives the host's libvirtd (``qemu:///system``). Some of them
  restart or stop the daemon on purpose, which would fail any other test talking to it then.
- ``bundle``: the tests of the frozen ``vmctl-boinc``, so that the bundle is built once, by one
  worker (it takes half a minute and PyInstaller's cache is not safe for two builders).
- a contract harness's id: its tests share the harness's session-long connection and machines.
- otherwise the test's file, whose module-scoped fixtures (booted guests) are then set up once.

Without ``-n`` the groups play no part and the suite runs in one process.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

LIBVIRTD_FILES = frozenset(
    {
        "tests/test_faults_libvirt.py",
        "tests/test_libvirt_daemon.py",
        "tests/test_libvirt_remote.py",
        "tests/test_races_libvirt.py",
    }
)
BUNDLE_FILES = frozenset(
    {
        "tests/test_boinc_bundle.py",
        "tests/test_boinc_hostcheck.py",
        "tests/test_boinc_nopython.py",
        "tests/test_boinc_package.py",
    }
)

_PARAMS = re.compile(r"\[(.*)\]$")


def group_of(nodeid: str) -> str:
    """The group of a test, from its node id (the controller sees no more than that)."""
    path = nodeid.split("::", 1)[0]
    params = _PARAMS.search(nodeid)
    ids = params.group(1) if params else ""
    if path in LIBVIRTD_FILES or ids.startswith("libvirt-qemu"):
        return "libvirtd"
    if path in BUNDLE_FILES:
        return "bundle"
    if path.startswith("tests/contract/") and ids:
        return f"contract-{ids}"  # the contract suite's only parameter is the harness
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # xdist's own loadgroup reads a mark through Item._nodeid, which pytest 9.2 no longer has;
    # its loadscope scheduler with our groups as the scopes does the same job.
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)
