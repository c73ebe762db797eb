"""The host's share of the VM: the volunteer's CPU usage limit, and the app's low priority.

**CPU usage limit.** The client throttles a CPU app itself, by suspending and resuming it (the
adapter pauses and resumes the VM), except for app versions whose plan class contains ``vbox``:
those "do their own throttling" (client_types.cpp), as vboxwrapper does with VirtualBox's CPU
execution cap (``set_throttles``). So under a ``vbox*`` plan class the adapter caps the VM with
the backend's ``set_cpu_limit`` at the preference ``cpu_usage_limit`` (0: no limit; at least 1 %,
as vboxwrapper), once the VM runs and again when the client says ``<reread_app_info/>`` (it does
when the preferences change, with a new ``init_data.xml``). Under any other plan class the
client's own throttling is left to work alone (capping too would throttle twice). Clients before
8.2 write no plan class into ``init_data.xml``: there a ``vbox_job.xml`` is capped (vboxwrapper
always caps), a ``vmctl_job.toml`` only with ``apply_cpu_usage_limit = true``.

**Priority.** BOINC runs apps at the lowest priority; the VM's host process (every thread: Linux
keeps a nice value per thread) gets nice 19 and the idle I/O class, each time a new one runs,
unless the volunteer runs apps at regular priority (``no_priority_change`` in ``init_data.xml``).

>>> limit_percent(0), limit_percent(55.5), limit_percent(0.2), limit_percent(None)
(100, 55, 1, 100)
"""

from __future__ import annotations

import contextlib
import logging
import os

import psutil

import vmctl
from vmctl.boinc._task import Task

__all__ = ["CpuLimit", "limit_percent", "lower_priority"]

log = logging.getLogger("vmctl.boinc")

IDLE_NICE = 19


def limit_percent(cpu_usage_limit: float | None) -> int:
    """vboxwrapper's ``set_throttles``: 0 (or none) is no limit, below 1 is 1."""
    if not cpu_usage_limit or cpu_usage_limit >= 100:
        return 100
    return max(1, int(cpu_usage_limit))


def lower_priority(pid: int) -> bool:
    """Nice 19 and the idle I/O class for every thread of ``pid``; whether it was done."""
    try:
        proc = psutil.Process(pid)
        threads = [t.id for t in proc.threads()] or [pid]
    except psutil.Error as exc:
        log.debug("priority of the VM process %d: %s", pid, exc)
        return False
    done = False
    for tid in threads:
        with contextlib.suppress(psutil.Error, OSError):
            thread = psutil.Process(tid)
            if thread.nice() < IDLE_NICE:
                thread.nice(IDLE_NICE)
            thread.ionice(psutil.IOPRIO_CLASS_IDLE)
            done = True
    return done


class CpuLimit:
    """Applies the limit and the priority to the task's VM; :meth:`poll` once a second."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._applied: int | None = None
        self._prioritised: int | None = None
        self._said: set[str] = set()

    def _say(self, key: str, level: int, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)

    @property
    def wanted(self) -> int | None:
        """The cap the adapter owes the VM, or None where the client throttles the task."""
        job, init = self._task.job, self._task.init
        applies = job.apply_cpu_usage_limit
        if applies is None:
            # clients before 8.2 write no plan class: a vbox_job.xml is capped as vboxwrapper caps it
            applies = "vbox" in init.plan_class if init.plan_class else job.source.endswith(".xml")
        return limit_percent(init.cpu_usage_limit) if applies else None

    def poll(self, vm: vmctl.Machine | None, pid: int | None) -> None:
        """``pid``: the VM's live host process (held by identity), None while there is none."""
        if pid is not None and pid != self._prioritised and pid != os.getpid():
            self._applied = None  # a new VM process: its limit is set again
            if self._task.init.no_priority_change or lower_priority(pid):
                self._prioritised = pid
        wanted = self.wanted
        if vm is None or wanted is None or wanted == self._applied:
            if wanted is None:
                self._say("client", logging.INFO, "CPU usage limit: the client throttles this task itself")
            return
        if not vm.capabilities.cpu_limit:
            if wanted < 100:
                self._say(
                    "unsupported",
                    logging.WARNING,
                    "CPU usage limit %d%%: the %s backend cannot cap a VM's CPU; the VM runs unlimited",
                    wanted,
                    self._task.job.backend,
                )
            self._applied = wanted
            return
        try:
            vm.set_cpu_limit(wanted)
        except vmctl.VmctlError as exc:
            self._say(f"failed-{wanted}", logging.WARNING, "cannot cap the VM's CPU use at %d%%: %s", wanted, exc)
            return
        self._applied = wanted
        log.info("CPU usage limit: %d%%", wanted)
