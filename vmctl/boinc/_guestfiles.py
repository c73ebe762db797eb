"""Guest files: what the guest tells the adapter through files, and what it leaves behind.

The shared directory (the slot itself, or ``<slot>/<shared_tag>``) is filled once per task
(``copy_to_shared``, the command line), then read each second: trigger files (completion,
temporary exit), the progress file and the heartbeat file the job names; at the end the outputs
are copied into the slot, and the tail of the guest's console goes to ``stderr.txt``. Everything
here is written by the guest, so every read is bounded and a bad file reads as "nothing said".

A trigger file holds up to three lines: a number (the exit code, or a delay in seconds), a
notice flag, and a message:

>>> parse_trigger("3\\n1\\nout of input\\n")
Trigger(number=3, notice=True, message='out of input')
>>> parse_trigger("")
Trigger(number=0, notice=False, message='')
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from vmctl.boinc._outcome import Fatal
from vmctl.boinc._task import Task

__all__ = ["CONSOLE_LOG", "CONSOLE_TAIL_LINES", "GuestFiles", "Trigger", "parse_trigger", "read_fraction"]

log = logging.getLogger("vmctl.boinc")

CONSOLE_LOG = "vm_console.log"
"""The guest's console, written by the hypervisor into the slot."""
CONSOLE_TAIL_LINES = 20


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


def read_fraction(path: Path) -> float | None:
    """The last number in the last 64 bytes of ``path``, clamped to 0..1, or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64))
            lines = f.read().decode("ascii", errors="replace").split()
    except OSError:
        return None
    for word in reversed(lines):
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
        #: wall time of the last resume: a guest cannot touch its heartbeat file while suspended
        self._resumed_at: float | None = None

    @property
    def shared_path(self) -> Path | None:
        """The directory shared with the guest, or None if the job shares none."""
        job, slot = self._task.job, self._task.slot
        if job.share_slot_dir:
            return slot.path
        if job.shared_dir:
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
            source = task.slot.resolve(name)
            if not source.is_file():
                raise Fatal(f"copy_to_shared: the file {name!r} is not in the slot ({source} is missing)")
            shutil.copyfile(source, shared / Path(name).name)
            log.info("copied %s to the shared directory", name)
        if job.copy_cmdline_to_shared:
            (shared / "cmdline").write_text(" ".join(self._cmdline_args) + "\n")
        task.state.shared_prepared = True
        task.save_state()

    # -- triggers ---------------------------------------------------------------------------------
    def trigger(self, name: str | None) -> Trigger | None:
        """The trigger file ``name`` in the shared directory, if the guest wrote it."""
        shared = self.shared_path
        if name is None or shared is None:
            return None
        path = shared / name
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
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
        with contextlib.suppress(FileNotFoundError):
            (shared / name).unlink()

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
        shared = self.shared_path
        return all(o.optional or (shared is not None and (shared / o.source).is_file()) for o in job.outputs)

    # -- progress and heartbeat ------------------------------------------------------------------
    def update_progress(self, elapsed: float) -> float:
        """Read the progress file (or, failing that, the share of ``job_duration`` run)."""
        job = self._task.job
        shared = self.shared_path
        value = None
        if job.fraction_done_file and shared is not None:
            value = read_fraction(shared / job.fraction_done_file)
        if value is not None:
            self.fraction_done = value
        elif job.job_duration > 0:
            self.fraction_done = min(1.0, max(0.0, elapsed / job.job_duration))
        return self.fraction_done

    def resumed(self) -> None:
        """The client resumed the task: the guest had no chance to touch its heartbeat file."""
        self._resumed_at = time.time()

    def heartbeat_silence(self, run_seconds: float) -> float | None:
        """Seconds the guest has not touched its heartbeat file, if that is longer than the job
        allows (``run_seconds``: how long this run has been running)."""
        job, shared = self._task.job, self.shared_path
        name = job.heartbeat_file
        if name is None or shared is None:
            return None
        try:
            age = time.time() - (shared / name).stat().st_mtime
        except FileNotFoundError:
            age = run_seconds
        if self._resumed_at is not None:
            age = min(age, time.time() - self._resumed_at)
        return age if age > job.heartbeat_interval else None

    # -- what the guest leaves behind -------------------------------------------------------------
    def copy_outputs(self) -> list[str]:
        """Copy the job's outputs into the slot (each replaced atomically); return the required
        outputs the guest did not produce."""
        task = self._task
        shared = self.shared_path
        missing: list[str] = []
        for out in task.job.outputs:
            source = shared / out.source if shared is not None else None
            if source is None or not source.is_file():
                if not out.optional:
                    missing.append(out.source)
                continue
            target = task.slot.resolve(out.target)
            tmp = target.with_name(f".{target.name}.vmctl-tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
            log.info("output %s -> %s (%d bytes)", out.source, out.target, target.stat().st_size)
        return missing

    def log_console_tail(self) -> None:
        """Log the last lines of the guest's console (they reach the project in stderr.txt)."""
        path = self._task.slot.path / CONSOLE_LOG
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 8192))
                lines = f.read().decode("utf-8", errors="replace").splitlines()[-CONSOLE_TAIL_LINES:]
        except OSError:
            return
        if lines:
            log.info("last lines of the guest console:\n  %s", "\n  ".join(lines))
