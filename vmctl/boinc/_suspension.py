"""Suspension: keeping the task's VM running or suspended, as the client wants it.

- The client suspends and resumes the task: pause and resume the VM in memory. A backend
  without pause keeps the VM running through short suspends (the client throttles CPU use with
  them) and *parks* it, saving its state to disk, once the task has stayed suspended for
  :data:`PARK_DELAY`; the resume restores it.
- Each second, :meth:`Suspension.reconcile` puts back what someone else changed (a VM paused,
  resumed, saved or restored behind the adapter's back) and parks the VM when due.
- Suspends and resumes are logged at most once a minute, so that throttling does not flood
  ``stderr.txt``.
"""

from __future__ import annotations

import logging
import math
import time

import vmctl
from vmctl.boinc._checkpoints import CHECKPOINT_RETRY
from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._outcome import Trouble
from vmctl.boinc._task import Task
from vmctl.boinc._vmpolicy import BOOT_TIMEOUT, VmPolicy

__all__ = ["CYCLE_LOG_INTERVAL", "PARK_DELAY", "Suspension"]

log = logging.getLogger("vmctl.boinc")

PARK_DELAY = 10.0
"""A backend without pause: seconds a task must stay suspended before its VM's state is saved
to disk. The client throttles CPU use with suspends of a second or a few (one per 1-9 s at a
10-50 % limit); saving and restoring a VM that often would cost more than it saves."""
CYCLE_LOG_INTERVAL = 60.0
"""At most one suspend/resume line per this many seconds in stderr.txt (CPU throttling)."""


class Suspension:
    """The VM of ``policy`` kept in the state the client's suspends and resumes ask for."""

    def __init__(self, task: Task, cpu: CpuTime, policy: VmPolicy) -> None:
        self._task = task
        self._cpu = cpu
        self._policy = policy
        self.parked = False
        """A backend without pause: the suspended task's VM is saved to disk."""
        self._park_at = math.inf
        self._cycles = 0
        self._cycles_logged_at = -math.inf

    # -- what the client says ---------------------------------------------------------------------
    def client_suspended(self, was_suspended: bool) -> None:
        """The client suspended the task: pause the VM, or schedule parking it."""
        vm = self._policy.machine
        if not vm.capabilities.pause:
            if not was_suspended and not self.parked:
                self._park_at = self._task.clock() + PARK_DELAY
                self._log_cycle(
                    f"suspended: the backend cannot pause; the VM's state goes to disk if the task "
                    f"stays suspended for {PARK_DELAY:.0f} s"
                )
            return
        try:
            vm.pause()
            self._log_cycle("suspended: the VM is paused in memory")
        except vmctl.InvalidState as exc:
            if exc.state is not vmctl.State.PAUSED:
                log.warning("cannot pause the VM: %s", exc)  # the check each second handles it
        except vmctl.VmctlError as exc:
            log.warning("cannot pause the VM: %s", exc)

    def client_resumed(self) -> None:
        """The client resumed the task: resume the VM, or restore it if it was parked."""
        vm = self._policy.machine
        if not vm.capabilities.pause:
            self._park_at = math.inf
            if self.parked:
                self._unpark()
            else:
                self._log_cycle("resumed: the VM kept running")
            return
        try:
            vm.resume()
            self._log_cycle("resumed: the VM runs again")
        except vmctl.InvalidState as exc:
            if exc.state is not vmctl.State.RUNNING:
                log.warning("cannot resume the VM: %s", exc)
        except vmctl.VmctlError as exc:
            log.warning("cannot resume the VM: %s", exc)

    def _log_cycle(self, text: str) -> None:
        """Log a suspend or resume, but at most one line a minute: the client throttles CPU use
        by suspending and resuming several times a second, which must not flood stderr.txt."""
        now = self._task.clock()
        self._cycles += 1
        if now - self._cycles_logged_at >= CYCLE_LOG_INTERVAL:
            more = self._cycles - 1
            note = f" ({more} more suspends/resumes in the last {now - self._cycles_logged_at:.0f} s)" if more else ""
            log.info("%s%s", text, note)
            self._cycles_logged_at = now
            self._cycles = 0
        else:
            log.debug("%s", text)

    # -- parking ----------------------------------------------------------------------------------
    def _park(self) -> None:
        """The task has stayed suspended and the backend cannot pause: save the VM to disk."""
        task, policy = self._task, self._policy
        cpu = policy.cpu_now()
        started = time.monotonic()
        if not policy.machine.capabilities.suspend:
            log.warning("the backend can neither pause nor save the VM: it runs on while suspended")
            self._park_at = math.inf
            return
        try:
            policy.machine.suspend(timeout=BOOT_TIMEOUT)
        except vmctl.VmctlError as exc:
            log.warning("cannot save the suspended task's VM to disk (will retry): %s", exc)
            self._park_at = task.clock() + CHECKPOINT_RETRY
            return
        self.parked = True
        self._park_at = math.inf
        task.state.saved_cpu_time = cpu
        self._cpu.checkpoint = max(self._cpu.checkpoint, cpu)
        task.state.process_pid = None
        task.save_state()
        policy.process_ended()
        log.info(
            "the task is still suspended: the VM's state is saved to disk (%.1f s); CPU time %.1f s",
            time.monotonic() - started,
            cpu,
        )

    def _unpark(self) -> None:
        """Restore the VM saved by :meth:`_park`."""
        policy = self._policy
        base = max(policy.cpu_now(), self._task.state.saved_cpu_time or 0.0)
        started = time.monotonic()
        try:
            policy.machine.start(timeout=BOOT_TIMEOUT)
        except vmctl.VmctlError as exc:
            raise Trouble(f"restoring the VM's saved state after a suspend failed: {exc}") from exc
        self.parked = False
        policy.started(base)
        log.info("resumed: the VM's saved state is restored (%.1f s)", time.monotonic() - started)

    # -- each second ------------------------------------------------------------------------------
    def reconcile(self, state: vmctl.State, now: float, suspended: bool) -> bool:
        """Put the VM, seen in ``state``, back where the client wants it (``suspended`` or not)
        when someone else moved it; park it when due. False if it was just restored (the rest
        of this second's work waits for the next). A STOPPED VM is left to the caller."""
        policy = self._policy
        vm = policy.machine
        if state is vmctl.State.CRASHED:
            raise Trouble("the VM crashed (its hypervisor process died)")
        if self.parked and state is not vmctl.State.SUSPENDED:
            self.parked = False
            if state is vmctl.State.STOPPED:  # the guest cannot have done that while saved
                raise Trouble("the VM's saved state was discarded while the task was suspended")
            log.warning("the VM saved while the task is suspended was started by someone else")
            policy.started(max(policy.cpu_now(), self._task.state.saved_cpu_time or 0.0), running=not suspended)
            if suspended:
                self._park_at = now + PARK_DELAY
        if state is vmctl.State.SUSPENDED and not self.parked:
            log.warning("the VM was saved to disk by someone else; restoring it")
            vm.start(timeout=BOOT_TIMEOUT)
            policy.started(policy.cpu_now(), running=not suspended)
            return False
        if state is vmctl.State.PAUSED and not suspended:
            log.warning("the VM was paused by someone else; resuming it")
            vm.resume()
        elif state is vmctl.State.RUNNING and suspended:
            if vm.capabilities.pause:
                vm.pause()
            elif now >= self._park_at:
                self._park()
        return True
