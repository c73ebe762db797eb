"""VM policy: what the adapter does with the task's VM, whatever the backend can or cannot do.

- Bring up: adopt a running VM, restore a saved state, revert to the last checkpoint after a
  crash or a lost saved state, or boot afresh (:meth:`VmPolicy.bring_up`, :meth:`~VmPolicy.recover`).
- Follow the client's network mode (:meth:`~VmPolicy.follow_network`).
- Save: at the end of a run, save the VM's state to disk (retrying while the hypervisor refuses
  for the moment), or failing that take a checkpoint and power off (:meth:`~VmPolicy.save`).
- Destroy: the VM, its overlay, saved state, snapshots and registration (:meth:`~VmPolicy.destroy`).

Suspending, resuming and parking while the task runs are :mod:`~vmctl.boinc._suspension`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time

import psutil

import vmctl
from vmctl.boinc._checkpoints import Checkpoints
from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._outcome import Trouble
from vmctl.boinc._task import Task
from vmctl.boinc._vmsetup import Registration

__all__ = ["BOOT_TIMEOUT", "SAVE_RETRY_PAUSE", "SAVE_RETRY_TIME", "VmPolicy"]

log = logging.getLogger("vmctl.boinc")

SAVE_RETRY_TIME = 10.0
"""How long saving the VM's state is retried when the hypervisor refuses for the moment."""
SAVE_RETRY_PAUSE = 0.3
_STATE_ERRORS_TOLERATED = 5
BOOT_TIMEOUT = 300
"""Seconds a boot, restore or revert may take."""


class VmPolicy:
    """The task's VM (``vm``, on the hypervisor ``hv``) and what is done with it."""

    def __init__(self, task: Task, cpu: CpuTime, checkpoints: Checkpoints, registration: Registration) -> None:
        self._task = task
        self._cpu = cpu
        self._checkpoints = checkpoints
        self._registration = registration
        self.hv: vmctl.Hypervisor | None = None
        self.vm: vmctl.Machine | None = None
        self.pid: int | None = None
        """The VM's host process (None while parked or unknown)."""
        self._vm_process: psutil.Process | None = None
        self._link: bool | None = None
        self._state_errors = 0

    @property
    def other_pid(self) -> int | None:
        """The VM's host process while it runs, else None: the process the client may SIGKILL
        when the app exits. Held by identity (its start time), so an ended VM process's pid,
        which another process may get, is never named."""
        proc = self._vm_process
        if proc is None or not proc.is_running():
            return None
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                return proc.pid
        return None

    def process_ended(self) -> None:
        """The VM's host process is gone (its state is saved to disk)."""
        self.pid = None
        self._vm_process = None

    @property
    def machine(self) -> vmctl.Machine:
        """The VM (once found or created)."""
        assert self.vm is not None
        return self.vm

    def cpu_now(self) -> float:
        """The task's CPU time now (see :meth:`CpuTime.now`)."""
        return self._cpu.now(self.vm)

    def close(self) -> None:
        """Close the hypervisor connection (the VM goes on as it is)."""
        if self.hv is not None:
            with contextlib.suppress(Exception):
                self.hv.close()
            self.hv = None

    # -- bring up ---------------------------------------------------------------------------------
    def bring_up(self, state: vmctl.State) -> None:
        """Get the VM, now in ``state``, RUNNING, continuing the work from wherever it was left."""
        vm = self.machine
        record = self._task.state
        wu = self._task.init.wu_cpu_time
        ckpt = record.checkpoint
        try:
            if state in (vmctl.State.RUNNING, vmctl.State.PAUSED):
                pid = vm.pid
                if pid is not None and pid == record.process_pid:
                    base = record.process_cpu_base
                    log.info("adopting the running VM (pid %s); CPU time base %.1f s", pid, base)
                else:
                    base = wu
                    log.warning("adopting a running VM started by someone else (pid %s)", pid)
                if state is vmctl.State.PAUSED:
                    vm.resume()
                self.started(base)
            elif state is vmctl.State.SUSPENDED:
                base = max(wu, record.saved_cpu_time or 0.0)
                log.info("restoring the VM's saved state (CPU time so far %.1f s)", base)
                try:
                    vm.start(timeout=BOOT_TIMEOUT)
                except vmctl.VmctlError as exc:
                    log.warning("restoring the saved state failed: %s", exc)
                    base = self.recover()
                self.started(base)
            elif state is vmctl.State.CRASHED or (state is vmctl.State.STOPPED and record.booted):
                # A VM whose state was saved to disk cannot have powered itself off: its saved
                # state was discarded (by hand, or the hypervisor's), the guest's work is not done.
                discarded = state is vmctl.State.STOPPED and record.saved_cpu_time is not None
                what = "lost its saved state" if discarded else _what_happened(state)
                log.warning("the VM %s; continuing from the last checkpoint", what)
                self.started(self.recover())
            elif state is vmctl.State.STOPPED:
                log.info("booting the VM")
                vm.start(timeout=BOOT_TIMEOUT)
                self.started(wu)
            else:
                raise Trouble(f"the VM is in state {state.value}")
        except vmctl.VmctlError as exc:
            raise Trouble(f"the VM did not start: {exc}") from exc
        if ckpt is not None:
            self._cpu.checkpoint = max(self._cpu.checkpoint, ckpt.cpu_time)

    def recover(self) -> float:
        """Revert to the last checkpoint, or boot afresh; return the CPU time base."""
        vm = self.machine
        ckpt = self._task.state.checkpoint
        if ckpt is not None and vm.capabilities.snapshots and any(s.name == ckpt.snapshot for s in vm.snapshots()):
            log.info("reverting to checkpoint %d (CPU time %.1f s)", ckpt.seq, ckpt.cpu_time)
            vm.revert(ckpt.snapshot, timeout=BOOT_TIMEOUT)
            if vm.state is not vmctl.State.RUNNING:
                vm.start(timeout=BOOT_TIMEOUT)
            return max(self._task.init.wu_cpu_time, ckpt.cpu_time)
        log.warning("no checkpoint to return to: booting the VM afresh (the guest restarts its work)")
        if vm.state in (vmctl.State.SUSPENDED, vmctl.State.RUNNING, vmctl.State.PAUSED):
            vm.poweroff()
        vm.start(timeout=BOOT_TIMEOUT)
        return self._task.init.wu_cpu_time

    def started(self, base: float, running: bool = True) -> None:
        """The VM process runs (started, restored or adopted); ``base`` is the task's CPU time
        before that process started, ``running`` whether the client lets the task run."""
        vm = self.machine
        self.pid = vm.pid
        # The client SIGKILLs other_pid when the app exits: name only a live host process
        # (the in-memory backend's pids are made up).
        self._vm_process = _live_process(self.pid) if self.pid != os.getpid() else None
        self._cpu.process_started(base, running)
        self._link = None
        record = self._task.state
        record.booted = True
        record.saved_cpu_time = None
        record.process_pid = self.pid
        record.process_cpu_base = base
        self._task.save_state()
        self._registration.update(self.pid)
        log.info("the VM is running (host pid %s)", self.pid)

    # -- each second ------------------------------------------------------------------------------
    def read_state(self) -> vmctl.State | None:
        """The VM's state; None if the hypervisor could not say this time (trouble after five
        times in a row)."""
        try:
            state = self.machine.state
        except vmctl.VmctlError as exc:
            self._state_errors += 1
            if self._state_errors >= _STATE_ERRORS_TOLERATED:
                raise Trouble(f"cannot get the VM's state: {exc}") from exc
            log.warning("cannot get the VM's state: %s", exc)
            return None
        self._state_errors = 0
        return state

    def follow_network(self, network_suspended: bool) -> None:
        """Set the guest's link down while the client suspends network activity, up otherwise."""
        if not self._task.job.network:
            return
        want = not network_suspended
        if self._link == want:
            return
        vm = self.machine
        if not vm.capabilities.network_toggle:
            log.warning("cannot follow the client's network mode: the backend cannot set the guest's link")
            self._link = want
            return
        if vm.state not in (vmctl.State.RUNNING, vmctl.State.PAUSED):
            return
        try:
            vm.set_network(want)
        except vmctl.Unsupported as exc:
            log.warning("cannot follow the client's network mode: %s", exc)
            self._link = want
            return
        if self._link is not None or not want:
            log.info("network %s: the guest's link is %s", "resumed" if want else "suspended", "up" if want else "down")
        self._link = want

    # -- save and destroy -------------------------------------------------------------------------
    def save(self, poweroff: bool = False) -> float:
        """Save the VM's state to disk (or, failing that, take a checkpoint) and end its process;
        with ``poweroff``, just power it off. Returns the CPU time of the work saved."""
        task, vm = self._task, self.vm
        if vm is None:
            return max(self._cpu.reported, task.init.wu_cpu_time)
        try:
            state = vm.state
        except vmctl.VmctlError:
            state = vmctl.State.UNKNOWN
        if state not in (vmctl.State.RUNNING, vmctl.State.PAUSED):
            return self.cpu_now()
        if poweroff:
            cpu = self.cpu_now()
            with contextlib.suppress(vmctl.VmctlError):
                vm.poweroff()
            task.state.process_pid = None
            task.save_state()
            return cpu
        started = time.monotonic()
        cpu, saved = self._save_to_disk(vm)
        if saved:
            task.state.saved_cpu_time = cpu
            self._cpu.checkpoint = cpu
            log.info("the VM's state is saved (%.1f s); CPU time %.1f s", time.monotonic() - started, cpu)
        else:
            self._checkpoints.take(vm)
            with contextlib.suppress(vmctl.VmctlError):
                vm.poweroff()
            log.warning("could not save the VM's state: powered off; the task continues from its last checkpoint")
        task.state.process_pid = None
        task.save_state()
        return cpu

    def _save_to_disk(self, vm: vmctl.Machine) -> tuple[float, bool]:
        """Suspend the VM to disk, retrying for :data:`SAVE_RETRY_TIME`; the CPU time of the
        work in it, and whether it is saved."""
        deadline = self._task.clock() + SAVE_RETRY_TIME
        cpu = self.cpu_now()
        while vm.capabilities.suspend:
            # Pause first so that the CPU time measured is exactly the work saved.
            with contextlib.suppress(vmctl.VmctlError):
                if vm.state is vmctl.State.RUNNING and vm.capabilities.pause:
                    vm.pause()
            cpu = self.cpu_now()
            try:
                vm.suspend()
                return cpu, True
            except vmctl.Unsupported:
                break
            except vmctl.VmctlError as exc:
                if self._task.clock() >= deadline:
                    log.warning("saving the VM's state failed: %s", exc)
                    break
                # Some hypervisors refuse while the guest holds a resource (QEMU: a mounted 9p
                # share); let the guest run a moment and try again.
                log.info("saving the VM's state must wait: %s", exc)
                with contextlib.suppress(vmctl.VmctlError):
                    if vm.state is vmctl.State.PAUSED:
                        vm.resume()
                self._task.sleep(SAVE_RETRY_PAUSE)
        return cpu, False

    def destroy(self) -> None:
        """Delete the VM with its overlay, saved state and snapshots, and its registration."""
        task = self._task
        if self.vm is not None:
            try:
                self.vm.destroy()
                log.info("the VM %s and its overlay, saved state and snapshots are deleted", task.vm_name)
            except vmctl.MachineNotFound:
                pass
            except vmctl.VmctlError as exc:
                log.warning("cannot delete the VM %s: %s", task.vm_name, exc)
                return
            self.vm = None
        if task.state.state_dir is not None:
            shutil.rmtree(task.state.state_dir, ignore_errors=True)
        self._registration.unregister()


def _what_happened(state: vmctl.State) -> str:
    return "crashed" if state is vmctl.State.CRASHED else "stopped while no adapter was running"


def _live_process(pid: int | None) -> psutil.Process | None:
    """``pid``'s process if it is alive (not a zombie), else None."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None
