"""CPU-time accounting: what the adapter reports to the client as the task's CPU and run time.

The client trusts the CPU time an app reports: it becomes the result's ``final_cpu_time`` and
drives credit. :class:`CpuTime` reports the VM process tree's CPU time on top of ``base``, the
task's CPU time before that process started (earlier runs, a restored saved state, a
checkpoint), and never less than it reported before. A backend that cannot measure CPU time
gets the VM's running time instead. It also keeps the task's running (not suspended) time, for
``job_duration`` and the guest's heartbeat.
"""

from __future__ import annotations

import logging

import vmctl
from vmctl.boinc._task import Task

__all__ = ["CpuTime"]

log = logging.getLogger("vmctl.boinc")


class CpuTime:
    """CPU and running time of one task, across the VM processes and runs it has had."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self.base = task.init.wu_cpu_time
        """The task's CPU time before the current VM process started."""
        self.checkpoint = task.init.wu_cpu_time
        """The CPU time of the work the client may count on (last checkpoint or saved state)."""
        self.reported = 0.0
        """The highest CPU time reported so far."""
        self._process = 0.0
        self._measured = True
        self._process_run_start = 0.0
        self._run_seconds = 0.0
        self._running_since: float | None = None

    def run_total(self) -> float:
        """Seconds this run has been running (not suspended)."""
        extra = self._task.clock() - self._running_since if self._running_since is not None else 0.0
        return self._run_seconds + extra

    def elapsed(self) -> float:
        """Seconds the task has run (not suspended), including earlier runs."""
        return self._task.init.starting_elapsed_time + self.run_total()

    def stop_running(self, now: float) -> None:
        """The client suspended the task: its running time stops."""
        if self._running_since is not None:
            self._run_seconds += now - self._running_since
        self._running_since = None

    def start_running(self, now: float) -> None:
        """The client resumed the task: its running time goes on."""
        self._running_since = now

    def process_started(self, base: float, running: bool) -> None:
        """A VM process runs (started, restored or adopted); ``base`` is the task's CPU time
        before it started, ``running`` whether the client lets the task run."""
        self.base = base
        self.checkpoint = max(self.checkpoint, base)
        self._process = 0.0
        self._process_run_start = self.run_total()
        self.reported = max(self.reported, base)
        if self._running_since is None and running:
            self._running_since = self._task.clock()

    def now(self, vm: vmctl.Machine | None) -> float:
        """The task's CPU time now: the VM process tree's plus that of earlier runs.

        Never less than reported before. A backend that cannot measure CPU time gets the VM's
        running time instead (said once in the log).
        """
        if vm is not None:
            if self._measured and "cpu_seconds" not in vm.capabilities.usage_fields:
                log.warning("the backend does not measure CPU time: reporting the VM's running time instead")
                self._measured = False
            if self._measured:
                cpu = _usage_cpu(vm)
                if cpu is not None:
                    self._process = max(self._process, cpu)
            else:
                self._process = self.run_total() - self._process_run_start
        self.reported = max(self.reported, self.base + self._process)
        return self.reported


def _usage_cpu(vm: vmctl.Machine) -> float | None:
    try:
        return vm.cpu_seconds()
    except vmctl.VmctlError:
        return None
