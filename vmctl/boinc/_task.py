"""The task one adapter runs, as every part of the adapter sees it.

:class:`Task` holds the slot, the client's ``init_data.xml`` (replaced when the client asks the
app to re-read it), the job, the clock, and the adapter's record in the slot
(:class:`~vmctl.boinc.state.TaskState`, replaced when a restarted adapter adopts its earlier
run's record). The parts keep the :class:`Task` and read ``init`` and ``state`` through it, so
that a replacement reaches all of them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from vmctl.boinc.initdata import InitData
from vmctl.boinc.job import Job
from vmctl.boinc.slot import STATE_FILE, Slot
from vmctl.boinc.state import TaskState, vm_name_for

__all__ = ["Clock", "Sleep", "Task"]

log = logging.getLogger("vmctl.boinc")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class Task:
    """One BOINC task in ``slot``: what the client told it, its job, and its record."""

    def __init__(
        self, slot: Slot, init: InitData, job: Job, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
    ) -> None:
        self.slot = slot
        self.init = init
        self.job = job
        self.clock = clock
        self.sleep = sleep
        self.vm_name = vm_name_for(init.result_name or slot.path.name)
        self.state_path = slot.path / STATE_FILE
        self.state = TaskState(result_name=init.result_name, vm_name=self.vm_name, backend=job.backend)

    def adopt_previous_record(self) -> None:
        """Continue from the record an earlier run of this task left in the slot, if any."""
        previous = TaskState.load(self.state_path)
        if previous is not None and previous.result_name == self.init.result_name and previous.vm_name == self.vm_name:
            previous.state_dir = self.state.state_dir
            self.state = previous

    def save_state(self) -> None:
        """Write the record (atomically); a failure is logged, the run goes on."""
        try:
            self.state.save(self.state_path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_path, exc)

    def forget_state(self) -> None:
        """Delete the record (the task is aborted: nothing is left to continue)."""
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
