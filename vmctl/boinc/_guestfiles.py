"""Guest files: what the guest tells the adapter through files, and what it leaves behind.

The shared directory (the slot itself, or ``<slot>/<shared_tag>``) is filled once per task
(``copy_to_shared``, the command line), then read each second: trigger files (completion,
temporary exit), the progress file and the heartbeat file the job names; at the end the outputs
are copied into the slot, and the tail of the guest's console goes to ``stderr.txt``. Everything
here is written by the guest, so every read goes through :mod:`vmctl.boinc._safefs` (no link is
followed, only regular files are read, every read is bounded) and a bad file reads as "nothing
said": a link, a FIFO or a device is logged once and ignored; an output that is one is missing.

A trigger file holds up to three lines: a number (the exit code, or a delay in seconds), a
notice flag, and a message:

>>> parse_trigger("3\\n1\\nout of input\\n")
Trigger(number=3, notice=True, message='out of input')
>>> parse_trigger("")
Trigger(number=0, notice=False, message='')
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmctl.boinc._outcome import Fatal
from vmctl.boinc._safefs import (
    UnsafeFile,
    copy_bounded,
    read_bounded,
    read_tail,
    stat_beneath,
    unlink_beneath,
    write_exclusive,
)
from vmctl.boinc._task import Task
from vmctl.boinc.slot import SlotError

__all__ = ["CONSOLE_LOG", "CONSOLE_TAIL_LINES", "GuestFiles", "Trigger", "parse_trigger", "read_fraction"]

log = logging.getLogger("vmctl.boinc")

CONSOLE_LOG = "vm_console.log"
"""The guest's console, written by the hypervisor into the slot."""
CONSOLE_TAIL_LINES = 20
TRIGGER_MAX = 4096
"""Bytes of a trigger file read (a number, a flag and a message)."""
PROGRESS_TAIL = 64
"""Bytes read from the end of the progress file."""
HEARTBEAT_CHECKS = 3
"""vboxwrapper's back-to-back heartbeat checks: missed this many times in a row, the guest is hung."""
DEFAULT_OUTPUT_MAX = 4 << 30
"""The largest output copied when ``init_data.xml`` gives no ``rsc_disk_bound``."""


@dataclass
class Trigger:
    """A trigger file the guest wrote."""

    number: int
    notice: bool
    message: str


def parse_trigger(text: str) -> Trigger:
    """The contents of a trigger file; a number that is not one reads as 0."""
    lines = text.splitlines()
    number = 0
    if lines and lines[0].strip():
        try:
            number = int(float(lines[0].split()[0]))
        except ValueError:
            number = 0
    notice = len(lines) > 1 and lines[1].strip() not in ("", "0")
    return Trigger(number=number, notice=notice, message=" ".join(lines[2:]).strip())


def read_fraction(root: Path, name: str) -> float | None:
    """The last number in the last 64 bytes of ``root/name``, clamped to 0..1, or None (also for
    a file that is not a regular file beneath ``root``)."""
    try:
        words = read_tail(root, name, PROGRESS_TAIL).decode("ascii", errors="replace").split()
    except OSError:
        return None
    for word in reversed(words):
        try:
            value = float(word)
        except ValueError:
            continue
        if math.isfinite(value):
            return min(1.0, max(0.0, value))
    return None


class GuestFiles:
    """The task's shared directory and the guest files the job names in it."""

    def __init__(self, task: Task, cmdline_args: list[str]) -> None:
        self._task = task
        self._cmdline_args = cmdline_args
        self.fraction_done = 0.0
        """The task's progress, as last read (0..1)."""
        # the heartbeat checks (see heartbeat_silence)
        self._beat_next: float | None = None
        self._beat_ok_at = 0.0
        self._beat_first = True
        self._beat_seen: tuple[int, int, int] | None = None
        self._beat_misses = 0
        self._refused: set[str] = set()

    def _refuse(self, exc: UnsafeFile) -> None:
        """Log once per name that a guest file is not a plain regular file."""
        name = str(exc.filename)
        if name not in self._refused:
            self._refused.add(name)
            log.warning("ignoring the guest's file %s", exc)

    @property
    def shared_path(self) -> Path | None:
        """The directory shared with the guest, or None if the job shares none."""
        job, slot = self._task.job, self._task.slot
        # share_slot_dir shares a dedicated subdirectory, never the slot itself: the slot holds
        # the client's files, the console log and the VM's state directory (issue 13, attack 3)
        if job.share_slot_dir or job.shared_dir:
            return slot.path / job.shared_tag
        return None

    def prepare_shared(self) -> None:
        """Create the shared directory and, once per task, copy in what the job asks for."""
        task, job = self._task, self._task.job
        shared = self.shared_path
        if shared is None:
            return
        shared.mkdir(exist_ok=True)
        if job.scratch_dir and task.init.project_dir:
            (Path(task.init.project_dir) / "scratch").mkdir(exist_ok=True)
        if task.state.shared_prepared:
            return
        for name in job.copy_to_shared:
            try:
                source = task.slot.resolve(name)
            except SlotError as exc:
                raise Fatal(f"copy_to_shared: {exc}") from None
            if not source.is_file():
                raise Fatal(f"copy_to_shared: the file {name!r} is not in the slot ({source} is missing)")
            write_exclusive(shared / Path(name).name, _chunks(source))
            log.info("copied %s to the shared directory", name)
        if job.copy_cmdline_to_shared:
            write_exclusive(shared / "cmdline", (" ".join(self._cmdline_args) + "\n").encode())
        task.state.shared_prepared = True
        task.save_state()

    # -- triggers ---------------------------------------------------------------------------------
    def trigger(self, name: str | None) -> Trigger | None:
        """The trigger file ``name`` in the shared directory, if the guest wrote it."""
        shared = self.shared_path
        if name is None or shared is None:
            return None
        try:
            text = read_bounded(shared, name, TRIGGER_MAX).decode("utf-8", errors="replace")
        except UnsafeFile as exc:
            self._refuse(exc)
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", shared / name, exc)
            return None
        return parse_trigger(text)

    def completion(self) -> Trigger | None:
        """The job's completion trigger, if the guest wrote it."""
        return self.trigger(self._task.job.completion_trigger_file)

    def temporary_exit(self) -> Trigger | None:
        """The job's temporary-exit trigger, if the guest wrote it."""
        return self.trigger(self._task.job.temporary_exit_trigger_file)

    def consume_temporary_exit(self) -> None:
        """Delete the temporary-exit trigger, so that the next run does not see it again."""
        shared, name = self.shared_path, self._task.job.temporary_exit_trigger_file
        assert shared is not None and name is not None
        with contextlib.suppress(FileNotFoundError, UnsafeFile):
            unlink_beneath(shared, name)

    def done(self, elapsed: float) -> bool:
        """Whether the guest's work is done: the completion trigger, or (for jobs where a
        power-off completes) the job's duration reached and every required output present."""
        job = self._task.job
        if self.completion() is not None:
            return True
        if not job.poweroff_completes:
            return False
        if job.job_duration > 0 and elapsed < job.job_duration:
            return False
        return all(o.optional or self._is_file(o.source) for o in job.outputs)

    def _is_file(self, name: str) -> bool:
        shared = self.shared_path
        if shared is None:
            return False
        try:
            stat_beneath(shared, name)
        except UnsafeFile as exc:
            self._refuse(exc)
            return False
        except OSError:
            return False
        return True

    # -- progress and heartbeat ------------------------------------------------------------------
    def update_progress(self, elapsed: float) -> float:
        """Read the progress file (or, failing that, the share of ``job_duration`` run)."""
        job = self._task.job
        shared = self.shared_path
        value = None
        if job.fraction_done_file and shared is not None:
            value = read_fraction(shared, job.fraction_done_file)
        if value is not None:
            self.fraction_done = value
        elif job.job_duration > 0:
            self.fraction_done = min(1.0, max(0.0, elapsed / job.job_duration))
        return self.fraction_done

    def resumed(self) -> None:
        """The client resumed the task: the guest could not touch its heartbeat file meanwhile,
        and its clock may have jumped; the count of missed checks starts again."""
        self._beat_misses = 0

    def heartbeat_silence(self, run_seconds: float) -> float | None:
        """Seconds since the guest's heartbeat file last changed, once that is vboxwrapper's
        verdict of a hung guest; ``run_seconds``: how long this run has been running.

        vboxwrapper's rules: the file is looked at every ``heartbeat_interval / 3`` s of running
        time (the first look that long into the run); at the first look it must exist, at each
        later one it must have changed since the previous look; three failed looks in a row mean
        no heartbeat. A change is any change of its modification time, size or inode (the guest's
        clock may be behind the host's or jump after a suspension: only changes count, never the
        age). A link or a file that is not regular is no heartbeat."""
        job, shared = self._task.job, self.shared_path
        name = job.heartbeat_file
        if name is None or shared is None:
            return None
        period = job.heartbeat_interval / HEARTBEAT_CHECKS
        if self._beat_next is None:
            self._beat_next = run_seconds + period
            self._beat_ok_at = run_seconds
            return None
        if run_seconds < self._beat_next:
            return None
        # no drift from the 1 s polling, and never two looks in a row after a stall
        self._beat_next += period
        if self._beat_next <= run_seconds:
            self._beat_next = run_seconds + period
        try:
            st = stat_beneath(shared, name)
            seen: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except UnsafeFile as exc:  # a link to a busy host file is no sign of life
            self._refuse(exc)
            seen = None
        except OSError:
            seen = None
        first, self._beat_first = self._beat_first, False
        alive = seen is not None and (first or seen != self._beat_seen)
        if seen is not None:
            self._beat_seen = seen
        if alive:
            self._beat_misses = 0
            self._beat_ok_at = run_seconds
            return None
        self._beat_misses += 1
        if self._beat_misses < HEARTBEAT_CHECKS:
            return None
        return run_seconds - self._beat_ok_at

    # -- what the guest leaves behind -------------------------------------------------------------
    def copy_outputs(self) -> list[str]:
        """Copy the job's outputs into the slot (each replaced atomically); return the required
        outputs the guest did not produce (a link, a FIFO, a device or an output over the bound
        counts as not produced)."""
        task = self._task
        shared = self.shared_path
        limit = int(task.init.rsc_disk_bound) if task.init.rsc_disk_bound > 0 else DEFAULT_OUTPUT_MAX
        inputs = self._inputs()
        missing: list[str] = []
        for out in task.job.outputs:
            target = self._output_target(out.target, inputs)
            try:
                if shared is None:
                    raise FileNotFoundError(errno.ENOENT, "no shared directory", out.source)
                size = copy_bounded(shared, out.source, target, limit)
            except UnsafeFile as exc:
                log.warning("the guest's output %s", exc)
                size = None
            except FileNotFoundError:
                size = None
            if size is None:
                if not out.optional:
                    missing.append(out.source)
                continue
            log.info("output %s -> %s (%d bytes)", out.source, out.target, size)
        return missing

    def copy_to_output(self, source: str, target: str) -> int:
        """Copy the guest's ``source`` (in the shared directory) to the result's output ``target``
        now (an intermediate upload); returns its size. Raises :class:`UnsafeFile` (a link, not a
        regular file, over the bound), :class:`Fatal` (a target outside the task's files or over
        an input) or :class:`OSError`."""
        shared = self.shared_path
        if shared is None:
            raise FileNotFoundError(errno.ENOENT, "no shared directory", source)
        task = self._task
        limit = int(task.init.rsc_disk_bound) if task.init.rsc_disk_bound > 0 else DEFAULT_OUTPUT_MAX
        return copy_bounded(shared, source, self._output_target(target, self._inputs()), limit)

    def _inputs(self) -> set[str]:
        """The files the task reads (the job file, images, files copied to the guest)."""
        job, slot = self._task.job, self._task.slot
        names = [n for n in (job.image, job.kernel, job.initrd, *job.copy_to_shared) if n is not None]
        found = {os.path.realpath(job.source)} if os.path.isabs(job.source) else set()
        for name in names:
            with contextlib.suppress(SlotError, OSError):
                found.add(os.path.realpath(slot.resolve(name)))
        return found

    def _output_target(self, name: str, inputs: set[str]) -> Path:
        """Where the output ``name`` goes: inside the project directory or the slot, never over an
        input of the task."""
        try:
            target = self._task.slot.resolve(name)
        except SlotError as exc:
            raise Fatal(f"output: {exc}") from None
        if os.path.realpath(target) in inputs:
            raise Fatal(f"output: {name!r} stands for {target}, an input of the task")
        return target

    def log_console_tail(self) -> None:
        """Log the last lines of the guest's console (they reach the project in stderr.txt)."""
        try:
            tail = read_tail(self._task.slot.path, CONSOLE_LOG, 8192)
        except OSError:
            return
        lines = tail.decode("utf-8", errors="replace").splitlines()[-CONSOLE_TAIL_LINES:]
        if lines:
            log.info("last lines of the guest console:\n  %s", "\n  ".join(lines))


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            yield data
