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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import vmctl
from vmctl.boinc import reaper
from vmctl.boinc.initdata import InitData, InitDataError, read_init_data
from vmctl.boinc.job import Job
from vmctl.boinc.shm import Channel, SharedMemory
from vmctl.boinc.slot import STATE_FILE, Slot
from vmctl.boinc.state import SNAPSHOT_PREFIX, Checkpoint, TaskState, snapshot_seq, vm_name_for
from vmctl.usage import pid_alive

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
QUIT_FLUSH_TIMEOUT = 1.5
"""How long the final status message may wait for the client to take the previous one."""
STATUS_LOG_INTERVAL = 3600.0
CYCLE_LOG_INTERVAL = 60.0
"""At most one suspend/resume line per this many seconds in stderr.txt (CPU throttling)."""
SAVE_RETRY_TIME = 10.0
"""How long saving the VM's state is retried when the hypervisor refuses for the moment."""
SAVE_RETRY_PAUSE = 0.3
CHECKPOINT_RETRY = 2.0
"""Seconds before retrying a checkpoint the hypervisor refused."""
PARK_DELAY = 10.0
"""A backend without pause: seconds a task must stay suspended before its VM's state is saved
to disk. The client throttles CPU use with suspends of a second or a few (one per 1-9 s at a
10-50 % limit); saving and restoring a VM that often would cost more than it saves."""
TROUBLE_BASE_DELAY = 30.0
TROUBLE_MAX_DELAY = 3600.0
CONSOLE_LOG = "vm_console.log"
DEFAULT_STATE_DIR = "vm"
CONSOLE_TAIL_LINES = 20

# BOINC's exit codes (lib/common_defs.h)
EXIT_ABORTED_BY_CLIENT = 194
EXIT_CHILD_FAILED = 195
EXIT_INIT_FAILURE = 206

Connect = Callable[[str, dict[str, Any]], vmctl.Hypervisor]
Clock = Callable[[], float]


def trouble_delay(count: int, base: float = TROUBLE_BASE_DELAY) -> float:
    """Seconds before the client retries after the ``count``-th hypervisor trouble in a row:
    ``base`` (30 s), twice that, four times, ... at most an hour."""
    return min(base * float(1 << min(max(count - 1, 0), 20)), TROUBLE_MAX_DELAY)


def default_connect(backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
    """``vmctl.connect(backend, **options)``."""
    return vmctl.connect(backend, **options)


class _Done(Exception):
    """Internal: the run is over with this exit code (end-of-run files already written)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Trouble(Exception):
    """Internal: hypervisor trouble; the run ends with a temporary exit."""


class _Fatal(Exception):
    """Internal: the task cannot succeed (job or image error); the run ends with ``code``."""

    def __init__(self, message: str, code: int = EXIT_INIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _TriggerInfo:
    number: int
    notice: bool
    message: str


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
        sleep: Callable[[float], None] = time.sleep,
        registry: Path | None = None,
        reap_at_start: bool = True,
        cmdline_args: Sequence[str] = (),
    ) -> None:
        self.slot = slot
        self.init = init
        self.job = job
        self.shm = shm
        self.connect = connect
        self.clock = clock
        self.sleep = sleep
        self.registry = registry
        if registry is None and init.boinc_dir:
            self.registry = reaper.registry_dir(Path(init.boinc_dir))
        self.reap_at_start = reap_at_start
        self.cmdline_args = list(cmdline_args)

        self.vm_name = vm_name_for(init.result_name or slot.path.name)
        self.state_path = slot.path / STATE_FILE
        self.state = TaskState(result_name=init.result_name, vm_name=self.vm_name, backend=job.backend)
        self.backend_options = self._backend_options()
        self.hv: vmctl.Hypervisor | None = None
        self.vm: vmctl.Machine | None = None
        self._record: reaper.Record | None = None

        # what the client said
        self.suspended = False
        #: wall time of the last resume: a guest cannot touch its heartbeat file while suspended
        self._resumed_at: float | None = None
        # a backend without pause: when to save a suspended task's VM to disk, and whether it is
        self._park_at = math.inf
        self.parked = False
        self.quit_requested: str | None = None
        self.network_suspended = False
        self._link: bool | None = None
        now = clock()
        self._last_heartbeat = now
        # CPU time: cpu_base + the current VM process's own CPU time
        self.cpu_base = init.wu_cpu_time
        self.checkpoint_cpu = init.wu_cpu_time
        self._proc_cpu = 0.0
        self._reported_cpu = 0.0
        self._cpu_measured = True
        self._proc_run_start = 0.0
        self.fraction_done = 0.0
        # running (not suspended) time of this run, for job_duration
        self._run_seconds = 0.0
        self._running_since: float | None = None
        self._next_slow = now
        self._next_checkpoint = now + self.checkpoint_interval
        self._next_status_log = now + STATUS_LOG_INTERVAL
        self._state_errors = 0
        self.pid: int | None = None
        self._other_pid: int | None = None
        self._cycles = 0
        self._cycles_logged_at = -math.inf

    # -- configuration ------------------------------------------------------------------------
    @property
    def checkpoint_interval(self) -> float:
        """max(the client's checkpoint period, the job's minimum), at least 1 s."""
        return max(self.init.checkpoint_period, self.job.min_checkpoint_interval, 1.0)

    def _backend_options(self) -> dict[str, Any]:
        def expand(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace("{slot}", str(self.slot.path)).replace("{project}", self.init.project_dir)
            return value

        options = {k: expand(v) for k, v in self.job.backend_options.items()}
        if self.job.backend == "qemu" and "state_dir" not in options:
            # The VM's overlay, saved state and snapshots live in the slot: they survive a client
            # restart, count against the task's disk bound like vboxwrapper's VM folder, and the
            # client deletes them with the slot when the task ends.
            state_dir = self.slot.path / DEFAULT_STATE_DIR
            options["state_dir"] = str(state_dir)
            self.state.state_dir = str(state_dir)
        return options

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
        except _Done as done:
            self._close()
            return done.code
        except _Trouble as trouble:
            return self._end_trouble(str(trouble))
        except _Fatal as fatal:
            return self._end_fatal(str(fatal), fatal.code)
        except vmctl.VmctlError as exc:
            log.exception("unexpected error from the hypervisor")
            return self._end_trouble(f"hypervisor error: {exc}")
        except Exception as exc:
            log.exception("internal error")
            return self._end_trouble(f"internal error in vmctl-boinc: {type(exc).__name__}: {exc}")

    def _close(self) -> None:
        if self.hv is not None:
            with contextlib.suppress(Exception):
                self.hv.close()
            self.hv = None

    # -- start -----------------------------------------------------------------------------------
    def _start(self) -> None:
        init, job = self.init, self.job
        log.info(
            "vmctl-boinc %s: task %s in slot %s, backend %s, job file %s",
            vmctl.__version__,
            init.result_name,
            self.slot.path,
            job.backend,
            job.source,
        )
        for note in job.notes:
            log.warning("job file: %s", note)
        previous = TaskState.load(self.state_path)
        if previous is not None and previous.result_name == init.result_name and previous.vm_name == self.vm_name:
            previous.state_dir = self.state.state_dir
            self.state = previous
        if self.reap_at_start and self.registry is not None:
            try:
                reaper.reap(self.registry, self.connect, keep=frozenset({self.vm_name}))
            except Exception as exc:  # never let housekeeping stop the task
                log.warning("reaper: %s", exc)
        try:
            self.hv = self.connect(job.backend, dict(self.backend_options))
        except vmctl.BackendUnavailable as exc:
            raise _Trouble(f"the VM backend is unavailable: {exc}") from exc
        except vmctl.VmctlError as exc:
            raise _Trouble(f"cannot connect to the VM backend {job.backend}: {exc}") from exc
        self._register()
        self._prepare_shared()
        try:
            self.vm = self.hv.machine(self.vm_name)
            log.info("found the VM %s (%s)", self.vm_name, self.vm.state.value)
        except vmctl.MachineNotFound:
            if self.state.booted:
                log.warning("the VM %s of this task is gone; starting its work afresh", self.vm_name)
            self.vm = self._create()
        self._bring_up()
        self._prune_snapshots()
        self._send_status()
        # Booting or restoring may take long; heartbeat silence counts from now.
        self._last_heartbeat = self.clock()

    def _register(self) -> None:
        if self.registry is None:
            return
        self._record = reaper.Record(
            vm=self.vm_name,
            backend=self.job.backend,
            options=self.backend_options,
            slot_dir=str(self.slot.path),
            result_name=self.init.result_name,
            state_dir=self.state.state_dir,
        )
        try:
            reaper.register(self.registry, self._record)
        except OSError as exc:
            log.warning("cannot register the VM for the reaper in %s: %s", self.registry, exc)
            self._record = None

    def _update_record(self) -> None:
        if self._record is not None and self.registry is not None and self._record.pid != self.pid:
            self._record.pid = self.pid
            self._record.pid_started = None
            with contextlib.suppress(OSError):
                reaper.register(self.registry, self._record)

    def _unregister(self) -> None:
        if self._record is not None and self.registry is not None:
            reaper.unregister(self.registry, self._record)
            self._record = None

    @property
    def shared_path(self) -> Path | None:
        if self.job.share_slot_dir:
            return self.slot.path
        if self.job.shared_dir:
            return self.slot.path / self.job.shared_tag
        return None

    def _prepare_shared(self) -> None:
        shared = self.shared_path
        if shared is None:
            return
        shared.mkdir(exist_ok=True)
        if self.job.scratch_dir and self.init.project_dir:
            (Path(self.init.project_dir) / "scratch").mkdir(exist_ok=True)
        if self.state.shared_prepared:
            return
        for name in self.job.copy_to_shared:
            source = self.slot.resolve(name)
            if not source.is_file():
                raise _Fatal(f"copy_to_shared: the file {name!r} is not in the slot ({source} is missing)")
            shutil.copyfile(source, shared / Path(name).name)
            log.info("copied %s to the shared directory", name)
        if self.job.copy_cmdline_to_shared:
            (shared / "cmdline").write_text(" ".join(self.cmdline_args) + "\n")
        self.state.shared_prepared = True
        self._save_state()

    def _slot_file(self, what: str, name: str | None) -> Path | None:
        if name is None:
            return None
        path = self.slot.resolve(name)
        if not path.exists():
            raise _Trouble(f"the {what} {name!r} is missing ({path})")
        if not path.is_file():
            raise _Fatal(f"the {what} {name!r} is not a regular file ({path})")
        if path.stat().st_size == 0:
            raise _Fatal(f"the {what} {name!r} is empty ({path})")
        return path

    def _spec(self) -> vmctl.MachineSpec:
        job = self.job
        disk = self._slot_file("base image", job.image)
        kernel = self._slot_file("kernel", job.kernel)
        initrd = self._slot_file("initrd", job.initrd)
        cpus = job.cpus or max(1, math.ceil(self.init.ncpus - 1e-9))
        network = None
        if job.network:
            forwards = [
                vmctl.PortForward(host_port=pf.host_port or _free_port(), guest_port=pf.guest_port)
                for pf in job.port_forwards
            ]
            for pf in forwards:
                log.info("guest port %d is reachable at 127.0.0.1:%d", pf.guest_port, pf.host_port)
            network = vmctl.Network(port_forwards=forwards)
        shared: dict[str, Path] = {}
        if self.shared_path is not None:
            shared[job.shared_tag] = self.shared_path
        if job.share_project_dir and self.init.project_dir:
            shared["project"] = Path(self.init.project_dir)
        if job.scratch_dir and self.init.project_dir:
            shared["scratch"] = Path(self.init.project_dir) / "scratch"
        try:
            return vmctl.MachineSpec(
                name=self.vm_name,
                disk=disk,
                overlay=True,
                memory_mib=job.memory_mib,
                cpus=cpus,
                kernel=kernel,
                initrd=initrd,
                cmdline=job.cmdline,
                network=network,
                shared_dirs=shared,
                serial_log=self.slot.path / CONSOLE_LOG,
            )
        except vmctl.InvalidSpec as exc:
            raise _Fatal(f"the job asks for an impossible VM: {exc}") from exc

    def _create(self) -> vmctl.Machine:
        assert self.hv is not None
        spec = self._spec()
        log.info(
            "creating the VM %s: %d MiB, %d CPU(s), image %s (copy-on-write overlay), network %s",
            spec.name,
            spec.memory_mib,
            spec.cpus,
            spec.disk or spec.kernel,
            "on" if spec.network else "off",
        )
        try:
            try:
                vm = self.hv.create(spec)
            except vmctl.Unsupported as exc:
                if spec.serial_log is None:
                    raise
                # Backends whose VMs run elsewhere (vSphere) cannot write the console into the slot.
                vm = self.hv.create(replace(spec, serial_log=None))
                log.warning("no %s: the backend cannot write the guest console to a file here (%s)", CONSOLE_LOG, exc)
        except vmctl.InvalidSpec as exc:
            raise _Fatal(f"the backend refused the VM: {exc}") from exc
        except vmctl.Unsupported as exc:
            raise _Fatal(f"the backend {self.job.backend} cannot run this job: {exc}") from exc
        except vmctl.MachineExists:
            vm = self.hv.machine(spec.name)
        except vmctl.VmctlError as exc:
            raise _Trouble(f"cannot create the VM: {exc}") from exc
        self.state.booted = False
        self.state.checkpoint = None
        self.state.saved_cpu_time = None
        self.state.process_pid = None
        self._save_state()
        return vm

    def _bring_up(self) -> None:
        """Get the VM RUNNING, continuing the work from wherever it was left."""
        vm = self._vm
        state = vm.state
        wu = self.init.wu_cpu_time
        ckpt = self.state.checkpoint
        if state is not vmctl.State.STOPPED or self.state.booted:
            trigger = self._trigger(self.job.completion_trigger_file)
            if trigger is not None:
                log.info("the guest finished while no adapter was watching")
                self._complete(trigger)
        try:
            if state in (vmctl.State.RUNNING, vmctl.State.PAUSED):
                pid = vm.pid
                if pid is not None and pid == self.state.process_pid:
                    base = self.state.process_cpu_base
                    log.info("adopting the running VM (pid %s); CPU time base %.1f s", pid, base)
                else:
                    base = wu
                    log.warning("adopting a running VM started by someone else (pid %s)", pid)
                if state is vmctl.State.PAUSED:
                    vm.resume()
                self._started(base)
            elif state is vmctl.State.SUSPENDED:
                base = max(wu, self.state.saved_cpu_time or 0.0)
                log.info("restoring the VM's saved state (CPU time so far %.1f s)", base)
                try:
                    vm.start(timeout=300)
                except vmctl.VmctlError as exc:
                    log.warning("restoring the saved state failed: %s", exc)
                    base = self._recover()
                self._started(base)
            elif state is vmctl.State.CRASHED or (state is vmctl.State.STOPPED and self.state.booted):
                # A VM whose state was saved to disk cannot have powered itself off: its saved
                # state was discarded (by hand, or the hypervisor's), the guest's work is not done.
                discarded = state is vmctl.State.STOPPED and self.state.saved_cpu_time is not None
                if state is vmctl.State.STOPPED and not discarded and self._guest_done():
                    self._complete(None)
                what = "lost its saved state" if discarded else _what_happened(state)
                log.warning("the VM %s; continuing from the last checkpoint", what)
                self._started(self._recover())
            elif state is vmctl.State.STOPPED:
                log.info("booting the VM")
                vm.start(timeout=300)
                self._started(wu)
            else:
                raise _Trouble(f"the VM is in state {state.value}")
        except vmctl.VmctlError as exc:
            raise _Trouble(f"the VM did not start: {exc}") from exc
        if ckpt is not None:
            self.checkpoint_cpu = max(self.checkpoint_cpu, ckpt.cpu_time)

    def _recover(self) -> float:
        """Revert to the last checkpoint, or boot afresh; return the CPU time base."""
        vm = self._vm
        ckpt = self.state.checkpoint
        if ckpt is not None and any(s.name == ckpt.snapshot for s in vm.snapshots()):
            log.info("reverting to checkpoint %d (CPU time %.1f s)", ckpt.seq, ckpt.cpu_time)
            vm.revert(ckpt.snapshot, timeout=300)
            if vm.state is not vmctl.State.RUNNING:
                vm.start(timeout=300)
            return max(self.init.wu_cpu_time, ckpt.cpu_time)
        log.warning("no checkpoint to return to: booting the VM afresh (the guest restarts its work)")
        if vm.state in (vmctl.State.SUSPENDED, vmctl.State.RUNNING, vmctl.State.PAUSED):
            vm.poweroff()
        vm.start(timeout=300)
        return self.init.wu_cpu_time

    def _started(self, base: float) -> None:
        """The VM process runs (started, restored or adopted); ``base`` is the task's CPU time
        before that process started."""
        vm = self._vm
        self.pid = vm.pid
        # The client SIGKILLs other_pid when the app exits: name only a live host process
        # (the in-memory backend's pids are made up).
        self._other_pid = self.pid if self.pid is not None and self.pid != os.getpid() and pid_alive(self.pid) else None
        self.cpu_base = base
        self.checkpoint_cpu = max(self.checkpoint_cpu, base)
        self._proc_cpu = 0.0
        self._proc_run_start = self._run_total()
        self._reported_cpu = max(self._reported_cpu, base)
        self._link = None
        self.state.booted = True
        self.state.saved_cpu_time = None
        self.state.process_pid = self.pid
        self.state.process_cpu_base = base
        self._save_state()
        self._update_record()
        if self._running_since is None and not self.suspended:
            self._running_since = self.clock()
        log.info("the VM is running (host pid %s)", self.pid)

    def _prune_snapshots(self, keep: str | None = None) -> None:
        vm = self._vm
        if not vm.capabilities.snapshots:
            return
        keep = keep or (self.state.checkpoint.snapshot if self.state.checkpoint else None)
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

    # -- the loop ---------------------------------------------------------------------------------
    @property
    def _vm(self) -> vmctl.Machine:
        assert self.vm is not None
        return self.vm

    def _step(self) -> None:
        now = self.clock()
        msg = self.shm.receive(Channel.PROCESS_CONTROL_REQUEST)
        if msg is not None:
            self._control(msg)
        beat = self.shm.receive(Channel.HEARTBEAT)
        if beat is not None:
            self._heartbeat(beat, now)
        if self.quit_requested is not None:
            self._save_and_exit(self.quit_requested, temporary=False)
        if now >= self._next_slow:
            self._next_slow = now + STATUS_INTERVAL
            self._slow(now)

    def _control(self, msg: str) -> None:
        vm = self._vm
        if "<quit/>" in msg:
            log.info("the client asked the task to quit: saving the VM's state")
            self._save_and_exit("quit", temporary=False)
        elif "<abort/>" in msg:
            self._abort()
        elif "<suspend/>" in msg:
            was_suspended = self.suspended
            self._set_running(False)
            if not vm.capabilities.pause:
                if not was_suspended and not self.parked:
                    self._park_at = self.clock() + PARK_DELAY
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
        elif "<resume/>" in msg:
            self._set_running(True)
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
        elif "<reread_app_info/>" in msg:
            try:
                self.init = read_init_data(self.slot.path)
                log.info("re-read init_data.xml (checkpoint period %g s)", self.init.checkpoint_period)
            except InitDataError as exc:
                log.warning("cannot re-read init_data.xml: %s", exc)
        elif "<network_available/>" in msg:
            pass
        else:
            log.warning("unknown message from the client: %s", msg.strip()[:200])

    def _log_cycle(self, text: str) -> None:
        """Log a suspend or resume, but at most one line a minute: the client throttles CPU use
        by suspending and resuming several times a second, which must not flood stderr.txt."""
        now = self.clock()
        self._cycles += 1
        if now - self._cycles_logged_at >= CYCLE_LOG_INTERVAL:
            more = self._cycles - 1
            note = f" ({more} more suspends/resumes in the last {now - self._cycles_logged_at:.0f} s)" if more else ""
            log.info("%s%s", text, note)
            self._cycles_logged_at = now
            self._cycles = 0
        else:
            log.debug("%s", text)

    def _set_running(self, running: bool) -> None:
        now = self.clock()
        if not running and not self.suspended:
            if self._running_since is not None:
                self._run_seconds += now - self._running_since
            self._running_since = None
            self.suspended = True
        elif running and self.suspended:
            self._running_since = now
            self._resumed_at = time.time()
            self.suspended = False
            self._next_checkpoint = max(self._next_checkpoint, now + 1.0)

    def _park(self) -> None:
        """The task has stayed suspended and the backend cannot pause: save the VM to disk."""
        vm = self._vm
        cpu = self.cpu_now()
        started = time.monotonic()
        try:
            vm.suspend(timeout=300)
        except vmctl.Unsupported as exc:
            log.warning("the backend can neither pause nor save the VM: it runs on while suspended (%s)", exc)
            self._park_at = math.inf
            return
        except vmctl.VmctlError as exc:
            log.warning("cannot save the suspended task's VM to disk (will retry): %s", exc)
            self._park_at = self.clock() + CHECKPOINT_RETRY
            return
        self.parked = True
        self._park_at = math.inf
        self.state.saved_cpu_time = cpu
        self.checkpoint_cpu = max(self.checkpoint_cpu, cpu)
        self.state.process_pid = None
        self._save_state()
        self.pid = self._other_pid = None
        log.info(
            "the task is still suspended: the VM's state is saved to disk (%.1f s); CPU time %.1f s",
            time.monotonic() - started,
            cpu,
        )

    def _unpark(self) -> None:
        """Restore the VM saved by :meth:`_park`."""
        vm = self._vm
        base = max(self.cpu_now(), self.state.saved_cpu_time or 0.0)
        started = time.monotonic()
        try:
            vm.start(timeout=300)
        except vmctl.VmctlError as exc:
            raise _Trouble(f"restoring the VM's saved state after a suspend failed: {exc}") from exc
        self.parked = False
        self._started(base)
        log.info("resumed: the VM's saved state is restored (%.1f s)", time.monotonic() - started)

    def _heartbeat(self, beat: str, now: float) -> None:
        self._last_heartbeat = now
        self.network_suspended = "<network_suspended/>" in beat
        self._apply_network()

    def _apply_network(self) -> None:
        if not self.job.network:
            return
        want = not self.network_suspended
        if self._link == want:
            return
        vm = self._vm
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

    def _slow(self, now: float) -> None:
        pid = self.init.client_pid
        if pid and not pid_alive(pid):
            self._save_and_exit(f"the BOINC client (pid {pid}) is gone", temporary=True)
        if now - self._last_heartbeat > HEARTBEAT_TIMEOUT:
            self._save_and_exit(f"no heartbeat from the BOINC client for {HEARTBEAT_TIMEOUT:.0f} s", temporary=True)
        vm = self._vm
        try:
            state = vm.state
            self._state_errors = 0
        except vmctl.VmctlError as exc:
            self._state_errors += 1
            if self._state_errors >= 5:
                raise _Trouble(f"cannot get the VM's state: {exc}") from exc
            log.warning("cannot get the VM's state: %s", exc)
            return
        if state is vmctl.State.CRASHED:
            raise _Trouble("the VM crashed (its hypervisor process died)")
        if self.parked and state is not vmctl.State.SUSPENDED:
            self.parked = False
            if state is vmctl.State.STOPPED:  # the guest cannot have done that while saved
                raise _Trouble("the VM's saved state was discarded while the task was suspended")
            log.warning("the VM saved while the task is suspended was started by someone else")
            self._started(max(self.cpu_now(), self.state.saved_cpu_time or 0.0))
            if self.suspended:
                self._park_at = now + PARK_DELAY
        if state is vmctl.State.STOPPED:
            self._guest_powered_off()
        if state is vmctl.State.SUSPENDED and not self.parked:
            log.warning("the VM was saved to disk by someone else; restoring it")
            vm.start(timeout=300)
            self._started(self.cpu_now())
            return
        if state is vmctl.State.PAUSED and not self.suspended:
            log.warning("the VM was paused by someone else; resuming it")
            vm.resume()
        elif state is vmctl.State.RUNNING and self.suspended:
            if vm.capabilities.pause:
                vm.pause()
            elif now >= self._park_at:
                self._park()
        trigger = self._trigger(self.job.completion_trigger_file)
        if trigger is not None:
            self._complete(trigger)
        trigger = self._trigger(self.job.temporary_exit_trigger_file)
        if trigger is not None:
            self._guest_temporary_exit(trigger)
        self._check_guest_heartbeat()
        self.fraction_done = self._fraction()
        if not self.suspended:
            self._send_status()
            if self.job.checkpoints and state is vmctl.State.RUNNING and now >= self._next_checkpoint:
                self._checkpoint()
        if now >= self._next_status_log:
            self._next_status_log = now + STATUS_LOG_INTERVAL
            log.info("status: CPU time %.0f s, %.1f%% done", self.cpu_now(), 100 * self.fraction_done)

    # -- CPU time and progress --------------------------------------------------------------------
    def _usage_cpu(self) -> float | None:
        try:
            usage = self._vm.usage()
        except vmctl.VmctlError:
            return None
        return usage.cpu_seconds

    def _run_total(self) -> float:
        extra = self.clock() - self._running_since if self._running_since is not None else 0.0
        return self._run_seconds + extra

    def elapsed(self) -> float:
        """Seconds the task has run (not suspended), including earlier runs."""
        return self.init.starting_elapsed_time + self._run_total()

    def cpu_now(self) -> float:
        """The task's CPU time now: the VM process tree's plus that of earlier runs.

        Never less than reported before. A backend that cannot measure CPU time gets the VM's
        running time instead (said once in the log).
        """
        if self.vm is not None:
            if self._cpu_measured and "cpu_seconds" not in self._vm.capabilities.usage_fields:
                log.warning("the backend does not measure CPU time: reporting the VM's running time instead")
                self._cpu_measured = False
            if self._cpu_measured:
                cpu = self._usage_cpu()
                if cpu is not None:
                    self._proc_cpu = max(self._proc_cpu, cpu)
            else:
                self._proc_cpu = self._run_total() - self._proc_run_start
        self._reported_cpu = max(self._reported_cpu, self.cpu_base + self._proc_cpu)
        return self._reported_cpu

    def _fraction(self) -> float:
        job = self.job
        shared = self.shared_path
        if job.fraction_done_file and shared is not None:
            value = _read_fraction(shared / job.fraction_done_file)
            if value is not None:
                return value
        if job.job_duration > 0:
            return min(1.0, max(0.0, self.elapsed() / job.job_duration))
        return self.fraction_done

    def _status_text(self, cpu: float, final: bool = False) -> str:
        parts = [
            f"<current_cpu_time>{cpu:e}</current_cpu_time>\n",
            f"<checkpoint_cpu_time>{self.checkpoint_cpu:e}</checkpoint_cpu_time>\n",
            f"<fraction_done>{(1.0 if final else self.fraction_done):e}</fraction_done>\n",
        ]
        if self._other_pid is not None and not final:
            parts.append(f"<other_pid>{self._other_pid}</other_pid>\n")
        return "".join(parts)

    def _send_status(self) -> None:
        """Report CPU time, checkpoint CPU time and progress, unless the client has not taken
        the previous report yet (every report carries the latest checkpoint CPU time)."""
        self.shm.send(Channel.APP_STATUS, self._status_text(self.cpu_now()))

    def _send_final_status(self, cpu: float, final: bool = False) -> None:
        """The last status before exiting (the client reads it when it sees the exit): wait
        briefly for the client to take the previous one, then replace it."""
        deadline = self.clock() + QUIT_FLUSH_TIMEOUT
        while self.shm.pending(Channel.APP_STATUS) and self.clock() < deadline:
            self.sleep(0.05)
        self.shm.send_overwrite(Channel.APP_STATUS, self._status_text(cpu, final=final))

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        vm = self._vm
        now = self.clock()
        self._next_checkpoint = now + self.checkpoint_interval
        if not (vm.capabilities.snapshots and vm.capabilities.live_snapshots):
            log.warning("the backend cannot snapshot a running VM: periodic checkpoints are off")
            self.job = _replace_job(self.job, checkpoints=False)
            return
        seq = self.state.next_seq
        name = f"{SNAPSHOT_PREFIX}{seq}"
        cpu = self.cpu_now()
        started = time.monotonic()
        try:
            if any(s.name == name for s in vm.snapshots()):
                vm.delete_snapshot(name)  # left over by a crash during an earlier attempt
            vm.snapshot(name, description=f"vmctl-boinc checkpoint {seq}, CPU time {cpu:.1f} s")
        except vmctl.Unsupported as exc:
            log.warning("checkpoints are off: %s", exc)
            self.job = _replace_job(self.job, checkpoints=False)
            return
        except vmctl.VmctlError as exc:
            log.warning("checkpoint %d failed (the previous one stays valid): %s", seq, exc)
            self._next_checkpoint = now + min(CHECKPOINT_RETRY, self.checkpoint_interval)
            return
        self.state.checkpoint = Checkpoint(
            seq=seq, snapshot=name, cpu_time=cpu, fraction_done=self.fraction_done, taken_at=time.time()
        )
        self.state.next_seq = seq + 1
        self.state.troubles = 0
        self._save_state()
        self.checkpoint_cpu = cpu
        log.info("checkpoint %d: CPU time %.1f s (snapshot in %.2f s)", seq, cpu, time.monotonic() - started)
        self._send_status()
        self._prune_snapshots(keep=name)

    # -- guest signals ----------------------------------------------------------------------------
    def _trigger(self, name: str | None) -> _TriggerInfo | None:
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
        lines = text.splitlines()
        number = 0
        if lines and lines[0].strip():
            try:
                number = int(float(lines[0].split()[0]))
            except ValueError:
                number = 0
        notice = len(lines) > 1 and lines[1].strip() not in ("", "0")
        return _TriggerInfo(number=number, notice=notice, message=" ".join(lines[2:]).strip())

    def _guest_done(self) -> bool:
        if self._trigger(self.job.completion_trigger_file) is not None:
            return True
        if not self.job.poweroff_completes:
            return False
        if self.job.job_duration > 0 and self.elapsed() < self.job.job_duration:
            return False
        shared = self.shared_path
        return all(o.optional or (shared is not None and (shared / o.source).is_file()) for o in self.job.outputs)

    def _guest_powered_off(self) -> None:
        trigger = self._trigger(self.job.completion_trigger_file)
        if trigger is not None:
            self._complete(trigger)
        if self._guest_done():
            log.info("the guest powered itself off: its work is done")
            self._complete(None)
        self._log_console_tail()
        raise _Trouble("the guest powered off before its work was done")

    def _check_guest_heartbeat(self) -> None:
        name, shared = self.job.heartbeat_file, self.shared_path
        if name is None or shared is None or self.suspended:
            return
        try:
            age = time.time() - (shared / name).stat().st_mtime
        except FileNotFoundError:
            age = self.elapsed() - self.init.starting_elapsed_time
        if self._resumed_at is not None:
            age = min(age, time.time() - self._resumed_at)
        if age > self.job.heartbeat_interval:
            self._save_vm(poweroff=True)
            raise _Trouble(f"the guest has not updated its heartbeat file {name} for {age:.0f} s: it seems hung")

    def _guest_temporary_exit(self, trigger: _TriggerInfo) -> None:
        shared = self.shared_path
        assert shared is not None and self.job.temporary_exit_trigger_file is not None
        with contextlib.suppress(FileNotFoundError):
            (shared / self.job.temporary_exit_trigger_file).unlink()
        reason = trigger.message or "the guest asked for a temporary exit"
        log.info("the guest asks for a temporary exit (%d s): %s", trigger.number, reason)
        cpu = self._save_vm()
        self._send_final_status(cpu)
        self.slot.write_temporary_exit(trigger.number, reason, trigger.notice)
        raise _Done(0)

    # -- ending a run -----------------------------------------------------------------------------
    def _save_vm(self, poweroff: bool = False) -> float:
        """Save the VM's state to disk (or, failing that, take a checkpoint) and end its process.
        Returns the CPU time of the work saved."""
        vm = self.vm
        if vm is None:
            return max(self._reported_cpu, self.init.wu_cpu_time)
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
            self.state.process_pid = None
            self._save_state()
            return cpu
        started = time.monotonic()
        deadline = self.clock() + SAVE_RETRY_TIME
        saved = False
        cpu = self.cpu_now()
        while vm.capabilities.suspend:
            # Pause first so that the CPU time measured is exactly the work saved.
            with contextlib.suppress(vmctl.VmctlError):
                if vm.state is vmctl.State.RUNNING and vm.capabilities.pause:
                    vm.pause()
            cpu = self.cpu_now()
            try:
                vm.suspend()
                saved = True
                break
            except vmctl.Unsupported:
                break
            except vmctl.VmctlError as exc:
                if self.clock() >= deadline:
                    log.warning("saving the VM's state failed: %s", exc)
                    break
                # Some hypervisors refuse while the guest holds a resource (QEMU: a mounted 9p
                # share); let the guest run a moment and try again.
                log.info("saving the VM's state must wait: %s", exc)
                with contextlib.suppress(vmctl.VmctlError):
                    if vm.state is vmctl.State.PAUSED:
                        vm.resume()
                self.sleep(SAVE_RETRY_PAUSE)
        if saved:
            self.state.saved_cpu_time = cpu
            self.checkpoint_cpu = cpu
            log.info("the VM's state is saved (%.1f s); CPU time %.1f s", time.monotonic() - started, cpu)
        else:
            self._checkpoint()
            with contextlib.suppress(vmctl.VmctlError):
                vm.poweroff()
            log.warning("could not save the VM's state: powered off; the task continues from its last checkpoint")
        self.state.process_pid = None
        self._save_state()
        return cpu

    def _save_and_exit(self, why: str, temporary: bool) -> None:
        cpu = self._save_vm()
        self.state.troubles = 0
        self._save_state()
        self._send_final_status(cpu)
        if temporary:
            log.warning("%s: the VM's state is saved; exiting until the client restarts the task", why)
            self.slot.write_temporary_exit(0, why)
        else:
            log.info("exiting (%s); the task continues at its next start", why)
        raise _Done(0)

    def _destroy_vm(self) -> None:
        if self.vm is not None:
            try:
                self.vm.destroy()
                log.info("the VM %s and its overlay, saved state and snapshots are deleted", self.vm_name)
            except vmctl.MachineNotFound:
                pass
            except vmctl.VmctlError as exc:
                log.warning("cannot delete the VM %s: %s", self.vm_name, exc)
                return
            self.vm = None
        if self.state.state_dir is not None:
            shutil.rmtree(self.state.state_dir, ignore_errors=True)
        self._unregister()

    def _abort(self) -> None:
        log.info("the client aborted the task: deleting the VM")
        self._log_console_tail()
        cpu = self.cpu_now()
        self._destroy_vm()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self._send_final_status(cpu)
        raise _Done(EXIT_ABORTED_BY_CLIENT)

    def _complete(self, trigger: _TriggerInfo | None) -> None:
        code = trigger.number if trigger is not None else 0
        cpu = self.cpu_now()
        if code == 0:
            missing = self._copy_outputs()
            if missing:
                self._log_console_tail()
                raise _Fatal(f"the guest finished without producing {', '.join(missing)}", EXIT_CHILD_FAILED)
            log.info("the guest's work is done: CPU time %.1f s", cpu)
        else:
            log.warning("the guest finished with exit code %d%s", code, f": {trigger.message}" if trigger else "")
            self._log_console_tail()
        self._destroy_vm()
        message = trigger.message if trigger is not None and trigger.message else None
        self.slot.write_finish(code, message, trigger.notice if trigger is not None else False)
        self._send_final_status(cpu, final=True)
        raise _Done(code)

    def _copy_outputs(self) -> list[str]:
        shared = self.shared_path
        missing: list[str] = []
        for out in self.job.outputs:
            source = shared / out.source if shared is not None else None
            if source is None or not source.is_file():
                if not out.optional:
                    missing.append(out.source)
                continue
            target = self.slot.resolve(out.target)
            tmp = target.with_name(f".{target.name}.vmctl-tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
            log.info("output %s -> %s (%d bytes)", out.source, out.target, target.stat().st_size)
        return missing

    def _end_trouble(self, reason: str) -> int:
        self.state.troubles += 1
        count = self.state.troubles
        if count > self.job.max_retries:
            return self._end_fatal(f"{reason} (giving up after {count - 1} retries)", EXIT_CHILD_FAILED)
        delay = trouble_delay(count, self.job.retry_delay)
        log.warning("%s; retrying in %.0f s (attempt %d of %d)", reason, delay, count, self.job.max_retries + 1)
        self._log_console_tail()
        if self.vm is not None:
            with contextlib.suppress(Exception):
                state = self.vm.state
                if state in (vmctl.State.RUNNING, vmctl.State.PAUSED):
                    self._save_vm()
        with contextlib.suppress(Exception):
            self._save_state()
        with contextlib.suppress(Exception):
            self._send_final_status(max(self._reported_cpu, self.init.wu_cpu_time))
        self.slot.write_temporary_exit(delay, reason)
        self._close()
        return 0

    def _end_fatal(self, message: str, code: int) -> int:
        log.error("%s: the task fails (exit status %d)", message, code)
        with contextlib.suppress(Exception):
            self._destroy_vm()
        self._close()
        return code

    # -- helpers --------------------------------------------------------------------------------
    def _save_state(self) -> None:
        try:
            self.state.save(self.state_path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_path, exc)

    def _log_console_tail(self) -> None:
        path = self.slot.path / CONSOLE_LOG
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


def _what_happened(state: vmctl.State) -> str:
    return "crashed" if state is vmctl.State.CRASHED else "stopped while no adapter was running"


def _read_fraction(path: Path) -> float | None:
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replace_job(job: Job, **changes: Any) -> Job:
    return replace(job, **changes)
