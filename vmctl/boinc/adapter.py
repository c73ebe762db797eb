"""The adapter: one BOINC task's VM, driven by what the client says, through the vmctl interface.

:class:`Adapter` polls the client's channels at 10 Hz and maps

========================================  ========================================================
client                                    VM
========================================  ========================================================
``<suspend/>`` / ``<resume/>``            ``pause()`` / ``resume()`` (the VM stays in memory); a
                                          backend without pause: ``suspend()`` to disk once the
                                          task has stayed suspended for 10 s, ``start()`` back
``<quit/>`` (also preemption), SIGTERM    ``suspend()`` to disk, checkpoint reported, exit 0
``<abort/>``                              ``destroy()`` (overlay, saved state, snapshots), exit 194
no heartbeat for 30 s, client pid gone    ``suspend()`` to disk, temporary exit
``<network_suspended/>`` in heartbeat     ``set_network(False)``; back to True when it goes
checkpoint period                         ``snapshot()``, recorded atomically, older ones deleted
========================================  ========================================================

and reports, every second, CPU time (the VM's process tree plus the task's earlier runs),
fraction done and ``other_pid`` (the VM's host process). It uses only the public vmctl
interface, so any backend works: what a backend cannot do (pause, snapshots, a console log in
the slot) is read from its capabilities or its ``Unsupported`` answer and worked around as
docs/boinc.md says. Tests inject a hypervisor factory and a clock.

This module is the loop and the message dispatch; each job it dispatches to has its own module:
``_cputime`` (CPU-time accounting), ``_checkpoints`` (checkpoint snapshots), ``_guestfiles``
(triggers, progress, heartbeat, outputs), ``_vmsetup`` (connection, spec, creation, reaper
registration), ``_vmpolicy`` (bring up, recover, save, destroy), ``_suspension`` (pause, park,
and putting back what others changed), ``_status`` (reports to the client), ``_endings`` (how
a run ends), ``_hostcheck`` (what the host must have); ``_task`` is what they share and
``_outcome`` how they end the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import vmctl
from vmctl.backend.usage import pid_alive
from vmctl.boinc import reaper
from vmctl.boinc._bootmedia import check_media
from vmctl.boinc._checkpoints import CHECKPOINT_RETRY as CHECKPOINT_RETRY
from vmctl.boinc._checkpoints import Checkpoints
from vmctl.boinc._cpulimit import CpuLimit
from vmctl.boinc._cputime import CpuTime
from vmctl.boinc._diskuse import DiskBound, vm_file_roots
from vmctl.boinc._endings import Endings
from vmctl.boinc._graphics import Graphics
from vmctl.boinc._guestfiles import CONSOLE_LOG as CONSOLE_LOG
from vmctl.boinc._guestfiles import CONSOLE_TAIL_LINES as CONSOLE_TAIL_LINES
from vmctl.boinc._guestfiles import GuestFiles
from vmctl.boinc._hostcheck import (
    ERR_EXEC,
    AccelerationMissing,
    HostNotReady,
    acceleration_report,
    check_memory,
    check_tools,
    choose_acceleration,
)
from vmctl.boinc._outcome import (
    EXIT_ABORTED_BY_CLIENT,
    EXIT_CHILD_FAILED,
    EXIT_INIT_FAILURE,
    Done,
    Fatal,
    Trouble,
    trouble_delay,
)
from vmctl.boinc._outcome import TROUBLE_BASE_DELAY as TROUBLE_BASE_DELAY
from vmctl.boinc._outcome import TROUBLE_MAX_DELAY as TROUBLE_MAX_DELAY
from vmctl.boinc._status import QUIT_FLUSH_TIMEOUT as QUIT_FLUSH_TIMEOUT
from vmctl.boinc._status import StatusReports
from vmctl.boinc._suspension import CYCLE_LOG_INTERVAL as CYCLE_LOG_INTERVAL
from vmctl.boinc._suspension import PARK_DELAY as PARK_DELAY
from vmctl.boinc._suspension import Suspension
from vmctl.boinc._task import Clock, Sleep, Task
from vmctl.boinc._trickles import Transfers
from vmctl.boinc._vmpolicy import SAVE_RETRY_PAUSE as SAVE_RETRY_PAUSE
from vmctl.boinc._vmpolicy import SAVE_RETRY_TIME as SAVE_RETRY_TIME
from vmctl.boinc._vmpolicy import VmPolicy
from vmctl.boinc._vmsetup import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR
from vmctl.boinc._vmsetup import (
    Connect,
    Registration,
    backend_options,
    connect_backend,
    create_machine,
    machine_spec,
    prepare_console_log,
)
from vmctl.boinc._vmsetup import default_connect as default_connect
from vmctl.boinc.errors import BoincError
from vmctl.boinc.hostconfig import Profile
from vmctl.boinc.initdata import InitData, InitDataError, read_init_data
from vmctl.boinc.job import Job
from vmctl.boinc.shm import Channel, SharedMemory
from vmctl.boinc.slot import Slot
from vmctl.boinc.state import TaskState

__all__ = [
    "EXIT_ABORTED_BY_CLIENT",
    "EXIT_CHILD_FAILED",
    "EXIT_INIT_FAILURE",
    "HEARTBEAT_TIMEOUT",
    "POLL_INTERVAL",
    "Adapter",
    "trouble_delay",
]

log = logging.getLogger("vmctl.boinc")

POLL_INTERVAL = 0.1
"""Seconds between two looks at the control and heartbeat channels (10 Hz)."""
STATUS_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 30.0
STATUS_LOG_INTERVAL = 3600.0
PORT_PICKS = 5
"""Boots of a new VM tried with freshly picked ports when another process took one."""


class Adapter:
    """Runs one task's VM in ``slot``. Call :meth:`run`, or :meth:`start` then :meth:`step`
    repeatedly (every :data:`POLL_INTERVAL`) until it returns an exit code."""

    def __init__(
        self,
        slot: Slot,
        init: InitData,
        job: Job,
        shm: SharedMemory,
        *,
        connect: Connect = default_connect,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        registry: Path | None = None,
        reap_at_start: bool = True,
        cmdline_args: Sequence[str] = (),
        profile: Profile | None = None,
        trickle_period: float = 0.0,
    ) -> None:
        # The host's profile gives the backend; without one (a library caller) the job's backend
        # name is used with that backend's own defaults.
        profile = profile or Profile(job.backend, job.backend, {})
        if profile.backend != job.backend:
            job = dataclasses.replace(job, backend=profile.backend)
        if slot.project_dir is None and init.project_dir:
            slot = Slot(slot.path, project_dir=init.project_dir)
        self._task = Task(slot, init, job, clock=clock, sleep=sleep)
        self.shm = shm
        self.connect = connect
        self.clock = clock
        self.sleep = sleep
        self.registry = registry
        if registry is None and init.boinc_dir:
            self.registry = reaper.registry_dir(Path(init.boinc_dir))
        self.reap_at_start = reap_at_start
        self.cmdline_args = list(cmdline_args)
        self.backend_options = backend_options(self._task, profile)
        now = clock()

        self._cpu = CpuTime(self._task)
        self._files = GuestFiles(self._task, self.cmdline_args)
        self._checkpoints = Checkpoints(
            self._task,
            self._cpu,
            progress=lambda: self._files.fraction_done,
            report=lambda: self._status.send(),
            now=now,
        )
        self._registration = Registration(self.registry, self._task, self.backend_options)
        self._policy = VmPolicy(self._task, self._cpu, self._checkpoints, self._registration)
        self._status = StatusReports(shm, self._task, self._cpu, self._files, self._policy)
        self._suspension = Suspension(self._task, self._cpu, self._policy)
        self._endings = Endings(self._task, self._cpu, self._files, self._policy, self._status)
        self._transfers = Transfers(self._task, self._files, shm, trickle_period)
        self._graphics = Graphics(self._task, shm)
        self._cpu_limit = CpuLimit(self._task)
        self._disk = DiskBound(
            vm_file_roots(slot.path, self.backend_options), init.rsc_disk_bound, now, machine=lambda: self._policy.vm
        )

        # what the client said
        self.suspended = False
        self.quit_requested: str | None = None
        self.network_suspended = False
        self._last_heartbeat = now
        self._next_slow = now
        self._next_status_log = now + STATUS_LOG_INTERVAL

    # -- the task, as the adapter's users knew it before its parts moved out ----------------------
    @property
    def slot(self) -> Slot:
        return self._task.slot

    @property
    def init(self) -> InitData:
        return self._task.init

    @property
    def job(self) -> Job:
        return self._task.job

    @property
    def state(self) -> TaskState:
        """The adapter's record in the slot."""
        return self._task.state

    @property
    def vm_name(self) -> str:
        return self._task.vm_name

    @property
    def state_path(self) -> Path:
        return self._task.state_path

    @property
    def shared_path(self) -> Path | None:
        return self._files.shared_path

    @property
    def hv(self) -> vmctl.Hypervisor | None:
        return self._policy.hv

    @property
    def vm(self) -> vmctl.Machine | None:
        return self._policy.vm

    @property
    def pid(self) -> int | None:
        return self._policy.pid

    @property
    def checkpoint_cpu(self) -> float:
        return self._cpu.checkpoint

    @property
    def parked(self) -> bool:
        """A backend without pause: the suspended task's VM is saved to disk."""
        return self._suspension.parked

    @property
    def fraction_done(self) -> float:
        return self._files.fraction_done

    @property
    def checkpoint_interval(self) -> float:
        """max(the client's checkpoint period, the job's minimum), at least 1 s."""
        return self._checkpoints.interval

    def cpu_now(self) -> float:
        """The task's CPU time now: the VM process tree's plus that of earlier runs; never less
        than reported before."""
        return self._policy.cpu_now()

    def elapsed(self) -> float:
        """Seconds the task has run (not suspended), including earlier runs."""
        return self._cpu.elapsed()

    # -- running ------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the task until it ends; return the process exit code."""
        code = self.start()
        while code is None:
            self.sleep(max(0.0, POLL_INTERVAL - (self.clock() - self._tick_started)))
            code = self.step()
        return code

    def start(self) -> int | None:
        """Connect, create or find the VM and bring it up. Returns an exit code if the run is
        already over (errors, or a guest that finished while no adapter was running)."""
        self._tick_started = self.clock()
        return self._guard(self._start)

    def step(self) -> int | None:
        """One 100 ms tick: control messages, heartbeat, and once a second everything else."""
        self._tick_started = self.clock()
        return self._guard(self._step)

    def request_quit(self, why: str) -> None:
        """Ask for a save-and-exit at the next tick (signal handlers call this)."""
        self.quit_requested = why

    def _guard(self, body: Callable[[], None]) -> int | None:
        try:
            body()
            return None
        except Done as done:
            self._policy.close()
            return done.code
        except AccelerationMissing as missing:
            # As vboxwrapper: the message in stderr.txt makes the client flag the host; the task fails.
            log.error("%s", acceleration_report(str(missing)))
            self._task.slot.write_finish(ERR_EXEC)
            self._policy.close()
            return ERR_EXEC
        except HostNotReady as missing:
            # The volunteer must act: the notice flag makes the BOINC Manager show the message.
            log.warning("this host cannot run the task's VM yet: %s", missing)
            self._task.slot.write_temporary_exit(missing.delay, str(missing), notice=True)
            self._policy.close()
            return 0
        except Trouble as trouble:
            return self._endings.trouble(str(trouble))
        except Fatal as fatal:
            return self._endings.fatal(str(fatal), fatal.code)
        except vmctl.VmctlError as exc:
            if isinstance(exc, BoincError):  # the adapter's own, not the hypervisor's
                log.exception("internal error")
                return self._endings.trouble(f"internal error in vmctl-boinc: {type(exc).__name__}: {exc}")
            log.exception("unexpected error from the hypervisor")
            return self._endings.trouble(f"hypervisor error: {exc}")
        except Exception as exc:
            log.exception("internal error")
            return self._endings.trouble(f"internal error in vmctl-boinc: {type(exc).__name__}: {exc}")

    # -- start ------------------------------------------------------------------------------------
    def _start(self) -> None:
        task, init, job = self._task, self._task.init, self._task.job
        log.info(
            "vmctl-boinc %s: task %s in slot %s, backend %s, job file %s",
            vmctl.__version__,
            init.result_name,
            task.slot.path,
            job.backend,
            job.source,
        )
        if job.refused:
            raise Fatal(
                f"the job file {job.source} asks for what vmctl-boinc cannot give the guest on the {job.backend} "
                f"backend: {'; '.join(job.refused)}. The task fails now rather than run a VM that waits for it"
            )
        task.adopt_previous_record()
        self._transfers.start()
        if not task.state.extra.get("notes_said"):
            for note in job.notes:
                log.warning("job file: %s", note)
            task.state.extra["notes_said"] = True
        accel = choose_acceleration(
            job.backend, self.backend_options, job.needs_acceleration, init.vm_extensions_disabled
        )
        if accel is not None:
            self.backend_options["accel"] = accel
        if self.reap_at_start and self.registry is not None:
            try:
                reaper.reap(self.registry, self.connect, keep=frozenset({task.vm_name}))
            except Exception as exc:  # never let housekeeping stop the task
                log.warning("reaper: %s", exc)
        check_tools(job.backend, self.backend_options)
        hv = self._policy.hv = connect_backend(self.connect, job.backend, self.backend_options)
        share_keys = job.keys_needing_shares()
        if share_keys and not hv.capabilities.shared_dirs:
            raise Fatal(
                f"the {job.backend} backend has no shared folders, which the job file's "
                f"{', '.join(share_keys)} need: it cannot run this job"
            )
        check_media(job, hv.capabilities)
        self._registration.register()
        self._files.prepare_shared()
        console = task.slot.path / CONSOLE_LOG
        if os.path.lexists(console):  # a new VM's log is made by create_machine
            prepare_console_log(console)
        try:
            self._policy.vm = hv.machine(task.vm_name)
            log.info("found the VM %s (%s)", task.vm_name, self._policy.vm.state.value)
        except vmctl.MachineNotFound:
            if task.state.booted:
                log.warning("the VM %s of this task is gone; starting its work afresh", task.vm_name)
            self._policy.vm = create_machine(hv, task, self._spec(hv))
            self._first_boot(hv)
        else:
            self._bring_up()
        self._checkpoints.prune(self._policy.machine)
        self._status.send()
        # Booting or restoring may take long; heartbeat silence counts from now.
        self._last_heartbeat = self.clock()

    def _first_boot(self, hv: vmctl.Hypervisor) -> None:
        """Boot a new VM; a port picked for it (``host_port = 0``) that another process took
        meanwhile is picked again, with a new VM (the backend refuses with EADDRINUSE)."""
        task = self._task
        check_memory(task.job.memory_mib)
        for attempt in range(1, PORT_PICKS + 1):
            try:
                self._policy.bring_up(vmctl.State.STOPPED)
                return
            except Trouble as trouble:
                cause = trouble.__cause__
                auto = any(pf.host_port == 0 for pf in task.job.port_forwards)
                taken = isinstance(cause, vmctl.BackendError) and cause.native == "EADDRINUSE"
                if not (auto and taken) or attempt == PORT_PICKS:
                    raise
                log.warning("a port picked for the VM was taken by another process; picking again (%s)", cause)
                self._policy.machine.destroy()
                self._policy.vm = create_machine(hv, task, self._spec(hv))

    def _spec(self, hv: vmctl.Hypervisor) -> vmctl.MachineSpec:
        spec = machine_spec(self._task, self._files.shared_path)
        if self._graphics.remote_desktop(hv.capabilities):
            spec = dataclasses.replace(spec, remote_desktop=True)
        return spec

    def _bring_up(self) -> None:
        """Finish if the guest did so while no adapter was watching; otherwise get the VM RUNNING."""
        state = self._policy.machine.state
        record = self._task.state
        if state is not vmctl.State.STOPPED or record.booted:
            trigger = self._files.completion()
            if trigger is not None:
                log.info("the guest finished while no adapter was watching")
                self._endings.complete(trigger)
        # A STOPPED VM whose state was saved to disk did not power itself off (see VmPolicy.bring_up).
        if state is vmctl.State.STOPPED and record.booted and record.saved_cpu_time is None:
            if self._files.done(self._cpu.elapsed()):
                self._endings.complete(None)
        if state not in (vmctl.State.RUNNING, vmctl.State.PAUSED):
            check_memory(self._task.job.memory_mib)
        self._policy.bring_up(state)

    # -- the loop ---------------------------------------------------------------------------------
    def _step(self) -> None:
        now = self.clock()
        msg = self.shm.receive(Channel.PROCESS_CONTROL_REQUEST)
        if msg is not None:
            self._control(msg)
        beat = self.shm.receive(Channel.HEARTBEAT)
        if beat is not None:
            self._heartbeat(beat, now)
        self._transfers.receive()
        if self.quit_requested is not None:
            self._endings.save_and_exit(self.quit_requested, temporary=False)
        if now >= self._next_slow:
            self._next_slow = now + STATUS_INTERVAL
            self._slow(now)

    def _control(self, msg: str) -> None:
        if "<quit/>" in msg:
            log.info("the client asked the task to quit: saving the VM's state")
            self._endings.save_and_exit("quit", temporary=False)
        elif "<abort/>" in msg:
            self._endings.abort()
        elif "<suspend/>" in msg:
            was_suspended = self.suspended
            self._set_running(False)
            self._suspension.client_suspended(was_suspended)
        elif "<resume/>" in msg:
            self._set_running(True)
            self._suspension.client_resumed()
        elif "<reread_app_info/>" in msg:
            try:
                # The client writes the last checkpoint's times here; this run started from the old ones.
                started = self._task.init
                self._task.init = dataclasses.replace(
                    read_init_data(self._task.slot.path),
                    wu_cpu_time=started.wu_cpu_time,
                    starting_elapsed_time=started.starting_elapsed_time,
                )
                log.info("re-read init_data.xml (checkpoint period %g s)", self._task.init.checkpoint_period)
            except InitDataError as exc:
                log.warning("cannot re-read init_data.xml: %s", exc)
        elif "<network_available/>" in msg:
            pass
        else:
            log.warning("unknown message from the client: %s", msg.strip()[:200])

    def _set_running(self, running: bool) -> None:
        now = self.clock()
        if not running and not self.suspended:
            self._cpu.stop_running(now)
            self.suspended = True
        elif running and self.suspended:
            self._cpu.start_running(now)
            self._files.resumed()
            self.suspended = False
            self._checkpoints.not_before(now + 1.0)

    def _heartbeat(self, beat: str, now: float) -> None:
        self._last_heartbeat = now
        self.network_suspended = "<network_suspended/>" in beat
        self._policy.follow_network(self.network_suspended)

    def _slow(self, now: float) -> None:
        """Once a second: the client's liveness, the VM's state, the guest's files, the status
        report and the periodic checkpoint."""
        pid = self._task.init.client_pid
        if pid and not pid_alive(pid):
            self._endings.save_and_exit(f"the BOINC client (pid {pid}) is gone", temporary=True)
        if now - self._last_heartbeat > HEARTBEAT_TIMEOUT:
            self._endings.save_and_exit(
                f"no heartbeat from the BOINC client for {HEARTBEAT_TIMEOUT:.0f} s", temporary=True
            )
        self._disk.check(now)
        state = self._policy.read_state()
        if state is None or not self._suspension.reconcile(state, now, self.suspended):
            return
        if state is vmctl.State.STOPPED:
            self._endings.guest_powered_off()
        trigger = self._files.completion()
        if trigger is not None:
            self._endings.complete(trigger)
        trigger = self._files.temporary_exit()
        if trigger is not None:
            self._endings.guest_temporary_exit(trigger)
        if not self.suspended:
            silence = self._files.heartbeat_silence(self._cpu.run_total())
            if silence is not None:
                self._endings.guest_hung(silence)
        duration = self._task.job.job_duration
        if duration > 0 and not self.suspended and self._cpu.elapsed() >= duration:
            self._endings.duration_reached(duration)
        fraction = self._files.update_progress(self._cpu.elapsed())
        if not self.suspended:
            self._transfers.poll(self._cpu.elapsed())
            self._graphics.poll(self._policy.vm, self._policy.pid)
            self._cpu_limit.poll(self._policy.vm, self._policy.other_pid)
            self._status.send()
            if self._checkpoints.due(now) and state is vmctl.State.RUNNING:
                self._checkpoints.take(self._policy.machine)
        if now >= self._next_status_log:
            self._next_status_log = now + STATUS_LOG_INTERVAL
            log.info("status: CPU time %.0f s, %.1f%% done", self.cpu_now(), 100 * fraction)
