"""vmctl.store's locks: what every exclusive section of the backends rests on."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import vmctl
from vmctl.backend.locking import file_lock, machine_lock


def test_file_lock_is_reentrant_in_its_thread_and_excludes_other_threads(tmp_path: Path) -> None:
    lock = tmp_path / "m.lock"
    other: list[BaseException] = []

    def try_other() -> None:
        try:
            with file_lock(lock, "the other thread", 0):
                pass
        except BaseException as exc:
            other.append(exc)

    with file_lock(lock, "first", 1), file_lock(lock, "again, same thread", 0):
        t = threading.Thread(target=try_other)
        t.start()
        t.join()
    assert len(other) == 1 and isinstance(other[0], vmctl.OperationTimeout)
    with file_lock(lock, "free again", 0):
        pass


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "m.lock"
    code = (
        "import sys, vmctl\nfrom vmctl.backend.locking import file_lock\n"
        "try:\n    with file_lock(sys.argv[1], 'child', 0):\n        print('got it')\n"
        "except vmctl.OperationTimeout:\n    print('refused')\n"
    )
    with file_lock(lock, "parent", 1):
        held = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60)
    free = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60)
    assert (held.stdout.strip(), free.stdout.strip()) == ("refused", "got it"), held.stderr + free.stderr


def test_a_waiter_never_trusts_a_lock_file_removed_while_it_waited(tmp_path: Path) -> None:
    """A machine destroyed while another caller waits: the waiter must not hold the old,
    unlinked file while a new caller locks a new one."""
    locks = tmp_path / "locks"
    entered = threading.Event()
    release = threading.Event()
    waiter_in: list[bool] = []

    def destroyer() -> None:
        with machine_lock(locks, "m1", "destroy", 5):
            entered.set()
            release.wait(10)

    def waiter() -> None:
        with contextlib.suppress(vmctl.MachineNotFound), machine_lock(locks, "m1", "start", 5):
            waiter_in.append((locks / "m1.lock").exists())
            raise vmctl.MachineNotFound("m1")  # what the core's state check then finds

    d = threading.Thread(target=destroyer)
    d.start()
    assert entered.wait(10)
    w = threading.Thread(target=waiter)
    w.start()
    release.set()
    d.join()
    w.join()
    assert waiter_in == [True]  # it locked the file that is there, not the one destroy removed
    assert not locks.exists()  # the lock went with the machine, and the directory with the last lock


def test_machine_lock_removes_its_file_when_the_machine_is_gone(tmp_path: Path) -> None:
    with pytest.raises(vmctl.MachineNotFound), machine_lock(tmp_path / "locks", "m2", "start", 1):
        raise vmctl.MachineNotFound("m2")
    assert not (tmp_path / "locks").exists()
