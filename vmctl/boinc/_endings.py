"""How a run ends: what the adapter does with the VM, and which files it leaves for the client.

============================================  ==================================================
ending                                        VM, files, exit status
============================================  ==================================================
quit (also preemption), SIGTERM               state saved to disk; exit 0, restarted in the slot
client gone or silent                         state saved to disk; ``boinc_temporary_exit``
the guest's temporary-exit trigger            state saved to disk; ``boinc_temporary_exit``
the guest's completion (trigger or power-off) outputs copied, VM deleted; ``boinc_finish_called``
the job's ``job_duration`` reached            outputs copied, VM deleted; ``boinc_finish_called`` 0
abort                                         VM deleted, record deleted; exit 194
hypervisor trouble                            state saved if it runs; ``boinc_temporary_exit``
                                              after a growing delay, failure after ``max_retries``
the task cannot succeed                       VM deleted; the failure's exit status
============================================  ==================================================

Before the VM of a failing task is deleted (a failure, or the guest's non-zero exit code), its
screen is saved in the slot and the hypervisor's log tail goes to stderr.txt (``_diagnosis``).

The endings that stop the loop raise :class:`~vmctl.boinc._outcome.Done` once their files are
written; :meth:`Endings.trouble` and :meth:`Endings.fatal` return the exit status instead (the
loop calls them for :class:`~vmctl.boinc._outcome.Trouble` and :class:`~vmctl.boinc._outcome.Fatal`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import NoReturn

import vmctl
from vmctl.boinc._bootmedia import write_cern_output
from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._diagnosis import diagnose
from vmctl.boinc._guestfiles import GuestFiles, Trigger
from vmctl.boinc._outcome import EXIT_ABORTED_BY_CLIENT, EXIT_CHILD_FAILED, Done, Fatal, Trouble, trouble_delay
from vmctl.boinc._status import StatusReports
from vmctl.boinc._task import Task
from vmctl.boinc._vmpolicy import VmPolicy

__all__ = ["Endings"]

log = logging.getLogger("vmctl.boinc")


class Endings:
    """The ways one run of the task ends."""

    def __init__(self, task: Task, cpu: CpuTime, files: GuestFiles, policy: VmPolicy, status: StatusReports) -> None:
        self._task = task
        self._cpu = cpu
        self._files = files
        self._policy = policy
        self._status = status

    def save_and_exit(self, why: str, temporary: bool) -> NoReturn:
        """Save the VM's state and exit 0, with a temporary exit if ``temporary``."""
        task = self._task
        cpu = self._policy.save()
        task.state.troubles = 0
        task.save_state()
        self._status.send_final(cpu)
        if temporary:
            log.warning("%s: the VM's state is saved; exiting until the client restarts the task", why)
            task.slot.write_temporary_exit(0, why)
        else:
            log.info("exiting (%s); the task continues at its next start", why)
        raise Done(0)

    def abort(self) -> NoReturn:
        """The client aborted the task: delete the VM and everything of the task."""
        log.info("the client aborted the task: deleting the VM")
        self._files.log_console_tail()
        cpu = self._policy.cpu_now()
        self._policy.destroy()
        self._task.forget_state()
        self._status.send_final(cpu)
        raise Done(EXIT_ABORTED_BY_CLIENT)

    def complete(self, trigger: Trigger | None) -> NoReturn:
        """The guest's work is done (``trigger``: the completion file, None: a power-off):
        copy the outputs, delete the VM, finish with the guest's exit code."""
        code = trigger.number if trigger is not None else 0
        cpu = self._policy.cpu_now()
        if code == 0:
            missing = self._files.copy_outputs()
            if missing:
                self._files.log_console_tail()
                raise Fatal(f"the guest finished without producing {', '.join(missing)}", EXIT_CHILD_FAILED)
            log.info("the guest's work is done: CPU time %.1f s", cpu)
        else:
            log.warning("the guest finished with exit code %d%s", code, f": {trigger.message}" if trigger else "")
            self._files.log_console_tail()
            diagnose(self._policy.vm, self._task.slot.path)
        self._policy.destroy()
        message = trigger.message if trigger is not None and trigger.message else None
        self._task.slot.write_finish(code, message, trigger.notice if trigger is not None else False)
        self._status.send_final(cpu, final=True)
        raise Done(code)

    def duration_reached(self, duration: float) -> NoReturn:
        """The job's ``job_duration`` of running time is reached: as vboxwrapper, power the VM
        off, delete it and finish successfully (the guest's outputs copied, as at completion)."""
        log.info("the job's duration (%.0f s of running time) is reached: the task ends successfully", duration)
        if self._task.job.cern_dataformat:
            write_cern_output(self._task)
        self.complete(None)

    def guest_powered_off(self) -> NoReturn:
        """The guest powered itself off: done if its work is, otherwise trouble."""
        trigger = self._files.completion()
        if trigger is not None:
            self.complete(trigger)
        if self._files.done(self._cpu.elapsed()):
            log.info("the guest powered itself off: its work is done")
            self.complete(None)
        self._files.log_console_tail()
        raise Trouble("the guest powered off before its work was done")

    def guest_temporary_exit(self, trigger: Trigger) -> NoReturn:
        """The guest asks to be restarted later: save the VM, exit with the guest's delay."""
        self._files.consume_temporary_exit()
        reason = trigger.message or "the guest asked for a temporary exit"
        log.info("the guest asks for a temporary exit (%d s): %s", trigger.number, reason)
        cpu = self._policy.save()
        self._status.send_final(cpu)
        self._task.slot.write_temporary_exit(trigger.number, reason, trigger.notice)
        raise Done(0)

    def guest_hung(self, silence: float) -> NoReturn:
        """The guest has not touched its heartbeat file for ``silence`` seconds: power it off;
        the task continues from its last checkpoint."""
        self._policy.save(poweroff=True)
        name = self._task.job.heartbeat_file
        raise Trouble(f"the guest has not updated its heartbeat file {name} for {silence:.0f} s: it seems hung")

    def trouble(self, reason: str) -> int:
        """Hypervisor trouble: save what runs, exit temporarily (the delay doubles with each
        trouble in a row); fail the task after the job's ``max_retries``."""
        task = self._task
        task.state.troubles += 1
        count = task.state.troubles
        if count > task.job.max_retries:
            return self.fatal(f"{reason} (giving up after {count - 1} retries)", EXIT_CHILD_FAILED)
        delay = trouble_delay(count, task.job.retry_delay)
        log.warning("%s; retrying in %.0f s (attempt %d of %d)", reason, delay, count, task.job.max_retries + 1)
        self._files.log_console_tail()
        vm = self._policy.vm
        if vm is not None:
            with contextlib.suppress(Exception):
                state = vm.state
                if state in (vmctl.State.RUNNING, vmctl.State.PAUSED):
                    self._policy.save()
        with contextlib.suppress(Exception):
            task.save_state()
        with contextlib.suppress(Exception):
            self._status.send_final(max(self._cpu.reported, task.init.wu_cpu_time))
        task.slot.write_temporary_exit(delay, reason)
        self._policy.close()
        return 0

    def fatal(self, message: str, code: int) -> int:
        """The task cannot succeed: delete the VM, fail with ``code``."""
        log.error("%s: the task fails (exit status %d)", message, code)
        diagnose(self._policy.vm, self._task.slot.path)
        with contextlib.suppress(Exception):
            self._policy.destroy()
        with contextlib.suppress(Exception):  # names no VM process (see _status)
            self._status.send_final(max(self._cpu.reported, self._task.init.wu_cpu_time))
        self._policy.close()
        return code
