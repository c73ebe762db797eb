"""Status reports: what the app tells the client about the task, each second and at its end.

A report (channel ``app_status``) carries the task's CPU time, the CPU time of its last
checkpoint (a change is how the client learns that the app checkpointed) and the fraction done,
and ``other_pid``: the client SIGKILLs that process when the app exits. It is the VM's host
process while one runs, else the adapter itself (gone by then). Never nothing: the client keeps
the last other_pid it was told (``ACTIVE_TASK::other_pids`` is only ever replaced, also across
restarts of the app), so an ended VM process, or one of an earlier run, would still be killed at
this app's exit: by then, perhaps, an unrelated process that got its pid.

The client takes one message at a time: a report made while the previous one is unread is
dropped (the next carries the same news), but the last one before the app exits
replaces it, since the client reads it when it sees the exit.

>>> status_text(12.5, 10.0, 0.25, 4242).splitlines()
['<current_cpu_time>1.250000e+01</current_cpu_time>', '<checkpoint_cpu_time>1.000000e+01</checkpoint_cpu_time>', \
'<fraction_done>2.500000e-01</fraction_done>', '<other_pid>4242</other_pid>']
"""

from __future__ import annotations

import os

from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._guestfiles import GuestFiles
from vmctl.boinc._task import Task
from vmctl.boinc._vmpolicy import VmPolicy
from vmctl.boinc.shm import Channel, SharedMemory

__all__ = ["QUIT_FLUSH_TIMEOUT", "StatusReports", "status_text"]

QUIT_FLUSH_TIMEOUT = 1.5
"""How long the final status message may wait for the client to take the previous one."""


def status_text(cpu: float, checkpoint_cpu: float, fraction_done: float, other_pid: int) -> str:
    """One ``app_status`` message."""
    return (
        f"<current_cpu_time>{cpu:e}</current_cpu_time>\n"
        f"<checkpoint_cpu_time>{checkpoint_cpu:e}</checkpoint_cpu_time>\n"
        f"<fraction_done>{fraction_done:e}</fraction_done>\n"
        f"<other_pid>{other_pid}</other_pid>\n"
    )


class StatusReports:
    """The task's reports to the client through ``shm``."""

    def __init__(self, shm: SharedMemory, task: Task, cpu: CpuTime, files: GuestFiles, policy: VmPolicy) -> None:
        self._shm = shm
        self._task = task
        self._cpu = cpu
        self._files = files
        self._policy = policy

    def _text(self, cpu: float, final: bool) -> str:
        fraction = 1.0 if final else self._files.fraction_done
        vm_process = None if final else self._policy.other_pid
        return status_text(cpu, self._cpu.checkpoint, fraction, os.getpid() if vm_process is None else vm_process)

    def send(self) -> None:
        """Report CPU time, checkpoint CPU time and progress, unless the client has not taken
        the previous report yet (every report carries the latest checkpoint CPU time)."""
        self._shm.send(Channel.APP_STATUS, self._text(self._policy.cpu_now(), final=False))

    def send_final(self, cpu: float, final: bool = False) -> None:
        """The last status before exiting, with ``cpu`` as the task's CPU time (``final``: the
        work is done): wait briefly for the client to take the previous one, then replace it."""
        clock = self._task.clock
        deadline = clock() + QUIT_FLUSH_TIMEOUT
        while self._shm.pending(Channel.APP_STATUS) and clock() < deadline:
            self._task.sleep(0.05)
        self._shm.send_overwrite(Channel.APP_STATUS, self._text(cpu, final=final))
