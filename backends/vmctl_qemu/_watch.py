"""The run state the keeper holds from QEMU's events (in ``run.json``), and waiting for a
machine's state files to change, on inotify.

Each thread keeps one inotify instance for good, with a watch per machine directory it waits
on: closing an instance costs milliseconds (the kernel waits for an RCU grace period), more than
the state change waited for. Where inotify refuses (its limit of instances or watches reached)
a wait polls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from vmctl.backend.locking import lock_held

from ._keeper import MOVING, RUN_RECORD
from ._launcher import read_json

if TYPE_CHECKING:
    from ._machine import QemuMachine

log = logging.getLogger("vmctl.qemu")

POLL = 0.05
#: how long a verb waits for the keeper to write the run state its command caused
EVENT_GRACE = 5.0
_MASK = inotify_flags.MOVED_TO | inotify_flags.CLOSE_WRITE | inotify_flags.DELETE | inotify_flags.DELETE_SELF
_GONE = inotify_flags.DELETE_SELF | inotify_flags.IGNORED

_local = threading.local()


def _forget_after_fork() -> None:
    global _local
    inotify = getattr(_local, "inotify", None)
    if inotify is not None:
        with contextlib.suppress(OSError):
            inotify.close()
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_after_fork)


class DirWatch:
    """A watch on one directory for changes of the named files."""

    def __init__(self, inotify: INotify | None, wd: int, names: frozenset[str]) -> None:
        self.inotify = inotify
        self.wd = wd
        self.names = names

    def wait(self, timeout: float) -> bool:
        """Wait until one of the files changes (True) or ``timeout`` passes (False); without
        inotify, sleep a poll interval and report a possible change."""
        if self.inotify is None:
            time.sleep(min(max(timeout, 0.0), POLL))
            return True
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.inotify.fd], [], [], left)
            if not ready:
                return False
            for event in self.inotify.read(timeout=0):
                if event.wd == self.wd and (event.name in self.names or event.mask & _GONE):
                    return True
        return False


@contextlib.contextmanager
def watching(directory: Path, names: frozenset[str]) -> Iterator[DirWatch]:
    """Watch ``directory`` from here on: read the state after entering, then :meth:`DirWatch.wait`."""
    try:
        inotify = getattr(_local, "inotify", None)
        if inotify is None:
            inotify = _local.inotify = INotify()
        wd = inotify.add_watch(directory, _MASK)
    except OSError as exc:
        log.debug("no inotify watch on %s (%s): polling", directory, exc)
        yield DirWatch(None, -1, names)
        return
    inotify.read(timeout=0)  # older changes: the caller reads the state after this
    yield DirWatch(inotify, wd, names)


def held_state(
    directory: Path, rec: dict[str, Any], *, moving: bool = True, run: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The keeper's ``run.json`` of the recorded run if it holds the run state (the keeper
    lives, its monitor works, no verb found it lagging, and, unless ``moving`` is False, no verb
    has moved the run state since the last event the keeper wrote), else None. ``run``: that
    file as the caller has just read it (else it is read here)."""
    run_id = rec.get("run_id")
    held = run if run is not None else read_json(directory, RUN_RECORD)
    if not held or held.get("run_id") != run_id or not isinstance(held.get("runstate"), str):
        return None
    if rec.get("events_lag") == run_id or not lock_held(directory / RUN_RECORD):
        return None
    if moving:
        since = moving_since(directory)
        if since is not None and float(held.get("event_time") or 0) < since:
            return None
    return held


def announce_move(directory: Path) -> float:
    """Before a command that moves QEMU's run state: note the moment (the time returned) in the
    machine directory. Until the keeper has written an event of that moment or later, readers
    ask QEMU: a verb killed between its command and :func:`await_runstate` must not leave them
    the state from before the move while the keeper catches up."""
    since = time.time()
    fd = os.open(directory / MOVING, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, repr(since).encode())
    finally:
        os.close(fd)
    return since


def moving_since(directory: Path) -> float | None:
    """The moment of the last verb's move that :func:`await_runstate` has not seen written."""
    try:
        fd = os.open(directory / MOVING, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        text = os.read(fd, 64)
    finally:
        os.close(fd)
    try:
        return float(text)
    except ValueError:
        return float("inf")  # being written: the move is under way now


def clear_move(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / MOVING)


def await_runstate(vm: QemuMachine, since: float, runstate: str) -> None:
    """Under the lock, after a command sent at ``since`` that moved QEMU to ``runstate``:
    return once the keeper has written that move (or any later event), so that the next reader
    sees it. A keeper that does not within :data:`EVENT_GRACE` is not trusted for the rest of
    its run (the record notes ``events_lag``): readers ask QEMU."""
    done = time.time()
    rec = vm._record()
    deadline = time.monotonic() + EVENT_GRACE
    with vm._watch() as watch:
        while True:
            held = held_state(vm.dir, rec, moving=False)
            if held is None:
                clear_move(vm.dir)
                return  # no keeper's state to wait for: readers ask QEMU
            at = float(held.get("event_time") or 0)
            if (at >= since and held.get("runstate") == runstate) or at >= done:
                clear_move(vm.dir)  # the keeper has written this move and any a killed verb left
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%s: the keeper did not report %s; reading it from QEMU", vm.name, runstate)
                with contextlib.suppress(OSError):
                    vm._update(events_lag=rec.get("run_id"))
                clear_move(vm.dir)
                return
            watch.wait(left)


class NotedMoves:
    """The moves of a machine whose keeper follows QEMU's events, noted as above (a
    ``_sequences.Moves``)."""

    def __init__(self, vm: QemuMachine) -> None:
        self.vm = vm

    def moving(self) -> float:
        return announce_move(self.vm.dir)

    def moved(self, since: float, runstate: str) -> None:
        await_runstate(self.vm, since, runstate)
