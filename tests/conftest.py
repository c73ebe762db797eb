"""How the suite shares the machine when it runs in several processes (``pytest -n 2``).

``.ci/test`` runs the suite with pytest-xdist (``-n 2``) and the scheduler below: each test gets a
group here and a group runs whole on one worker, in collection order. The groups keep what must not
run side by side apart:

- ``libvirtd``: the files that test the host's libvirtd itself (``qemu:///system``): faults,
  races, the daemon, remote access.
- ``bundle``: the tests of the frozen ``vmctl-boinc``, so that the bundle is built once, by one
  worker (it takes half a minute and PyInstaller's cache is not safe for two builders).
- a contract harness's id: its tests share the harness's session-long connection and machines.
- otherwise the test's file, whose module-scoped fixtures (booted guests) are then set up once.

Without ``-n`` the groups play no part and the suite runs in one process.

Two tests stop or restart libvirtd on purpose, which would fail any other test talking to it
then. They hold the libvirtd lock exclusively (mark ``stops_libvirtd``); every other test that
drives ``qemu:///system`` holds it shared, in any worker and any pytest process on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path
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

#: other files whose tests drive qemu:///system
LIBVIRTD_USERS = LIBVIRTD_FILES | {
    "tests/test_appliance.py",
    "tests/test_boinc_diagnosis.py",
    "tests/test_bootmedia.py",
}
LIBVIRTD_LOCK = Path("/tmp/vmctl-tests-libvirtd.lock")
#: taken first by a test that stops libvirtd, so that new users wait while the ones in flight end
LIBVIRTD_GATE = Path("/tmp/vmctl-tests-libvirtd.gate")

_PARAMS = re.compile(r"\[(.*)\]$")


def group_of(nodeid: str) -> str:
    """The group of a test, from its node id (the controller sees no more than that)."""
    path = nodeid.split("::", 1)[0]
    params = _PARAMS.search(nodeid)
    ids = params.group(1) if params else ""
    if path in LIBVIRTD_FILES:
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


def uses_libvirtd(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    params = _PARAMS.search(nodeid)
    return path in LIBVIRTD_USERS or bool(params and params.group(1).startswith("libvirt-qemu"))


@contextlib.contextmanager
def libvirtd_turn(exclusive: bool) -> Iterator[None]:
    """A readers-writer lock across processes (flock), the writer first: while a writer waits at
    the gate, no new reader passes it."""
    with LIBVIRTD_GATE.open("a") as gate, LIBVIRTD_LOCK.open("a") as lock:
        if exclusive:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _libvirtd_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    stops = request.node.get_closest_marker("stops_libvirtd") is not None
    if not stops and not uses_libvirtd(request.node.nodeid):
        yield
        return
    with libvirtd_turn(exclusive=stops):
        yield
