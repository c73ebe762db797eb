"""Checkpoints: snapshots of the running VM, taken every checkpoint period and recorded safely.

A checkpoint is a live snapshot named ``vmctl-ckpt-<seq>``. It is recorded in the task's record
(:class:`~vmctl.boinc.state.TaskState`) only once it exists, the client learns of it through the
next status report (its ``checkpoint_cpu_time``), and older checkpoint snapshots are deleted
only after the new record is on disk: a crash at any moment leaves a checkpoint to return to.
A backend that cannot snapshot a running VM turns periodic checkpoints off (said once); a
snapshot the hypervisor refuses for the moment is retried after :data:`CHECKPOINT_RETRY`.

vboxwrapper's ``disable_automatic_checkpoints`` (``Job.checkpoint_reports``): no snapshots, but
at every client checkpoint period a checkpoint is reported (the current CPU time as the
checkpoint CPU time), as vboxwrapper's ``create_snapshot`` returns success without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import vmctl
from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._task import Task
from vmctl.boinc.state import SNAPSHOT_PREFIX, Checkpoint, snapshot_seq

__all__ = ["CHECKPOINT_RETRY", "Checkpoints"]

log = logging.getLogger("vmctl.boinc")

CHECKPOINT_RETRY = 2.0
"""Seconds before retrying a checkpoint the hypervisor refused."""


class Checkpoints:
    """When the next checkpoint is due, taking it, and deleting the ones it replaces.

    ``progress`` gives the fraction done recorded with a checkpoint; ``report`` sends the client
    a status report (the new checkpoint CPU time) once a checkpoint is recorded.
    """

    def __init__(
        self, task: Task, cpu: CpuTime, *, progress: Callable[[], float], report: Callable[[], None], now: float
    ) -> None:
        self._task = task
        self._cpu = cpu
        self._progress = progress
        self._report = report
        self.enabled = task.job.checkpoints or task.job.checkpoint_reports
        """Periodic checkpoints are on (the job asks for them and the backend can take them)."""
        self.next_due = now + self.interval
        self._said_reports_only = False

    @property
    def reports_only(self) -> bool:
        """Checkpoints are reported without snapshots (vboxwrapper's disable_automatic_checkpoints)."""
        return not self._task.job.checkpoints and self._task.job.checkpoint_reports

    @property
    def interval(self) -> float:
        """max(the client's checkpoint period, the job's minimum), at least 1 s; reported-only
        checkpoints follow the client's period alone, as in vboxwrapper."""
        if self.reports_only:
            return max(self._task.init.checkpoint_period, 1.0)
        return max(self._task.init.checkpoint_period, self._task.job.min_checkpoint_interval, 1.0)

    def due(self, now: float) -> bool:
        """Whether a periodic checkpoint is due at ``now``."""
        return self.enabled and now >= self.next_due

    def not_before(self, when: float) -> None:
        """Take the next checkpoint no earlier than ``when``."""
        self.next_due = max(self.next_due, when)

    def take(self, vm: vmctl.Machine) -> None:
        """Snapshot the running VM, record it, report it, and delete the older checkpoints.
        A failure leaves the previous checkpoint valid."""
        task = self._task
        now = task.clock()
        self.next_due = now + self.interval
        if self.reports_only:
            if not self._said_reports_only:
                log.info("checkpoints are reported to the client without snapshots (disable_automatic_checkpoints)")
                self._said_reports_only = True
            self._cpu.checkpoint = self._cpu.now(vm)
            log.debug("checkpoint reported without a snapshot: CPU time %.1f s", self._cpu.checkpoint)
            self._report()
            return
        if not (vm.capabilities.snapshots and vm.capabilities.live_snapshots):
            log.warning("the backend cannot snapshot a running VM: periodic checkpoints are off")
            self.enabled = False
            return
        seq = task.state.next_seq
        name = f"{SNAPSHOT_PREFIX}{seq}"
        cpu = self._cpu.now(vm)
        started = time.monotonic()
        try:
            if any(s.name == name for s in vm.snapshots()):
                vm.delete_snapshot(name)  # left over by a crash during an earlier attempt
            vm.snapshot(name, description=f"vmctl-boinc checkpoint {seq}, CPU time {cpu:.1f} s")
        except vmctl.Unsupported as exc:
            log.warning("checkpoints are off: %s", exc)
            self.enabled = False
            return
        except vmctl.VmctlError as exc:
            log.warning("checkpoint %d failed (the previous one stays valid): %s", seq, exc)
            self.next_due = now + min(CHECKPOINT_RETRY, self.interval)
            return
        task.state.checkpoint = Checkpoint(
            seq=seq, snapshot=name, cpu_time=cpu, fraction_done=self._progress(), taken_at=time.time()
        )
        task.state.next_seq = seq + 1
        task.state.troubles = 0
        task.save_state()
        self._cpu.checkpoint = cpu
        log.info("checkpoint %d: CPU time %.1f s (snapshot in %.2f s)", seq, cpu, time.monotonic() - started)
        self._report()
        self.prune(vm, keep=name)

    def prune(self, vm: vmctl.Machine, keep: str | None = None) -> None:
        """Delete every checkpoint snapshot but ``keep`` (by default the recorded one)."""
        if not vm.capabilities.snapshots:
            return
        checkpoint = self._task.state.checkpoint
        keep = keep or (checkpoint.snapshot if checkpoint else None)
        try:
            snaps = vm.snapshots()
        except vmctl.VmctlError as exc:
            log.warning("cannot list snapshots: %s", exc)
            return
        for snap in snaps:
            if snapshot_seq(snap.name) is not None and snap.name != keep:
                try:
                    vm.delete_snapshot(snap.name)
                    log.info("deleted the old snapshot %s", snap.name)
                except vmctl.VmctlError as exc:
                    log.warning("cannot delete the snapshot %s: %s", snap.name, exc)
