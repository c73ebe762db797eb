"""The one lifecycle interface every backend implements.

Backends subclass :class:`Hypervisor` and :class:`Machine` and implement the ``_do_*``
methods. The public verbs live here, once: they check the machine's state against one
transition table and the backend's :class:`~vmctl.types.Capabilities`, so that a verb means the
same thing on every backend and an impossible one raises a typed error.

The hook protocol. A public verb runs as::

    with machine._exclusive(verb, timeout):    # other callers of this machine wait here
        state = machine._get_state()           # refused with InvalidState unless allowed
        machine._do_<verb>(...)                # only ever called from an allowed state

so a ``_do_*`` hook may assume that the machine was, a moment ago and under the backend's
exclusive section, in one of the states :data:`ALLOWED_FROM` lists for its verb, and that the
capability the verb needs is there. Where the backend has no exclusive section (the default), a
hook must expect that another caller moved the machine after the check and answer with
:class:`InvalidState` (read the state again to say which), never with a BackendError for a lost
race. Hooks raise only vmctl errors: :class:`~vmctl.errors.BackendError` when the hypervisor
failed, :class:`~vmctl.errors.OperationTimeout` at their deadline.

>>> import pathlib, tempfile, vmctl
>>> disk = pathlib.Path(tempfile.mkdtemp()) / "base.img"
>>> _ = disk.write_bytes(b"")
>>> hv = vmctl.connect("memory")
>>> vm = hv.create(vmctl.MachineSpec(name="doc-1", disk=disk))
>>> vm.state
<State.STOPPED: 'stopped'>
>>> vm.start(); vm.pause(); vm.state
<State.PAUSED: 'paused'>
>>> vm.pause()
Traceback (most recent call last):
...
vmctl.errors.InvalidState: cannot pause machine 'doc-1' while it is paused (allowed from: running)
>>> vm.destroy()
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from vmctl.errors import InvalidSpec, InvalidState, MachineNotFound, OperationTimeout, SnapshotExists, Unsupported
from vmctl.screenshot import Screenshot
from vmctl.types import (
    SPEC_FEATURES,
    Capabilities,
    DiskUsage,
    MachineSpec,
    Snapshot,
    State,
    Usage,
    validate_name,
    validate_snapshot_name,
)

__all__ = ["ALLOWED_FROM", "Hypervisor", "Machine"]

log = logging.getLogger("vmctl")

_S = State
#: From which states each verb may be called. The same on every backend.
ALLOWED_FROM: Mapping[str, tuple[State, ...]] = {
    "start": (_S.STOPPED, _S.SUSPENDED, _S.CRASHED),
    "pause": (_S.RUNNING,),
    "resume": (_S.PAUSED,),
    "suspend": (_S.RUNNING, _S.PAUSED),
    "stop": (_S.RUNNING, _S.PAUSED),
    "poweroff": (_S.RUNNING, _S.PAUSED, _S.SUSPENDED, _S.CRASHED),
    "restart": (_S.RUNNING,),
    "snapshot": (_S.STOPPED, _S.RUNNING, _S.PAUSED),
    "revert": (_S.STOPPED, _S.RUNNING, _S.PAUSED, _S.SUSPENDED, _S.CRASHED),
    "delete_snapshot": (_S.STOPPED, _S.RUNNING, _S.PAUSED, _S.SUSPENDED, _S.CRASHED),
    "set_network": (_S.RUNNING, _S.PAUSED),
    "set_cpu_limit": (_S.STOPPED, _S.RUNNING, _S.PAUSED, _S.SUSPENDED),
    "screenshot": (_S.RUNNING, _S.PAUSED),
}

POLL_INTERVAL = 0.05


class Machine(ABC):
    """One virtual machine on one backend. Get it from :meth:`Hypervisor.create`,
    :meth:`Hypervisor.machine` or :meth:`Hypervisor.machines`; it is a handle, so any number of
    handles (in any number of processes) may refer to the same machine.
    """

    def __init__(self, hypervisor: Hypervisor, name: str) -> None:
        self.hypervisor = hypervisor
        self.name = name

    def __repr__(self) -> str:
        try:
            state = self.state.value
        except Exception:  # a repr must never raise
            state = "?"
        return f"<{type(self).__name__} {self.name!r} on {self.hypervisor.name} {state}>"

    # -- what backends implement -------------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> MachineSpec:
        """The spec the machine was created from."""

    def _exclusive(self, verb: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """The section in which the core checks the state and runs one verb's ``_do_*`` hook.

        While one caller (a thread or a process, through any handle) is inside it, every other
        caller of the same machine waits at its entry, at most ``timeout`` seconds, then raises
        :class:`OperationTimeout`. It must be re-entrant in the thread that holds it. On entry it
        may also finish or undo what a caller killed in the middle of a verb left behind, so that
        the state read next is true (``verb`` is ``"recover"`` for :meth:`recover`, ``"destroy"``
        for :meth:`destroy`). Raises :class:`MachineNotFound` if the machine is gone.

        The default is no section: the backend relies on its hypervisor to refuse a verb in the
        wrong state, which the hook then reports as :class:`InvalidState`.
        """
        return contextlib.nullcontext()

    @abstractmethod
    def _get_state(self) -> State:
        """The state now, read from the hypervisor. Never changes anything (no recovery, no
        cleanup: ``repr`` and notebook displays call it). UNKNOWN where it cannot tell."""

    @abstractmethod
    def _do_start(self, timeout: float) -> None:
        """Boot the machine (from STOPPED or CRASHED) or restore its saved state (SUSPENDED).

        Blocks until the hypervisor runs it (RUNNING), not until the guest has booted.
        """

    @abstractmethod
    def _do_poweroff(self, timeout: float) -> None:
        """Power off by force (from RUNNING, PAUSED, SUSPENDED or CRASHED), discarding any saved
        state. Blocks until STOPPED."""

    @abstractmethod
    def _do_destroy(self, timeout: float) -> None:
        """Undefine the machine and delete what vmctl made for it (overlay, saved state,
        snapshots), never the base image. The core has powered off a RUNNING or PAUSED machine
        first. Blocks until the machine is gone; afterwards lookups raise MachineNotFound."""

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        """Undefine an adopted machine (:attr:`managed` False), deleting its disk images only with
        ``delete_disks``; the core has powered off a RUNNING or PAUSED machine first."""
        raise Unsupported(self.hypervisor.name, "destroy", "this backend cannot destroy an adopted machine")

    def _do_pause(self, timeout: float) -> None:
        """Freeze a RUNNING machine in host memory. Blocks until PAUSED."""
        raise Unsupported(self.hypervisor.name, "pause")

    def _do_resume(self, timeout: float) -> None:
        """Continue a PAUSED machine. Blocks until RUNNING."""
        raise Unsupported(self.hypervisor.name, "resume")

    def _do_suspend(self, timeout: float) -> None:
        """Save a RUNNING or PAUSED machine's state to disk and end its process. Blocks until
        SUSPENDED; on failure the machine stays as it was (a RUNNING one keeps running)."""
        raise Unsupported(self.hypervisor.name, "suspend")

    def _do_request_shutdown(self) -> None:
        """Press the ACPI power button of a RUNNING machine; return at once (the core waits
        for STOPPED outside the exclusive section and forces a power-off at its deadline)."""
        raise Unsupported(self.hypervisor.name, "stop")

    def _do_reset(self, timeout: float) -> None:
        """Reset a RUNNING machine at once (a hard restart). Blocks until it runs again."""
        raise Unsupported(self.hypervisor.name, "restart")

    def _do_reboot(self, timeout: float) -> bool:
        """Graceful reboot of a RUNNING machine; return False if the guest did not comply by the
        deadline (the core then resets it), True once it runs again."""
        raise Unsupported(self.hypervisor.name, "restart", "no graceful reboot")

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        """Take snapshot ``name`` (validated, not taken yet) of a STOPPED machine, or with
        memory of a RUNNING or PAUSED one (only where ``live_snapshots``); the machine's state
        is unchanged afterwards. Returns the snapshot as :meth:`snapshots` lists it."""
        raise Unsupported(self.hypervisor.name, "snapshot")

    def _do_snapshots(self) -> list[Snapshot]:
        """The machine's snapshots, oldest first. A read: also called outside the section."""
        raise Unsupported(self.hypervisor.name, "snapshots")

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        """Return to ``snapshot`` (found a moment ago). Blocks until RUNNING if it has memory,
        else STOPPED; any saved state is discarded."""
        raise Unsupported(self.hypervisor.name, "revert")

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        """Delete snapshot ``name`` (found a moment ago); the machine's state is untouched."""
        raise Unsupported(self.hypervisor.name, "delete_snapshot")

    def _do_usage(self) -> Usage:
        """Resource usage now; a read, called outside the section, from any state."""
        return Usage(machine=self.name)

    def _do_cpu_seconds(self) -> float | None:
        """CPU time alone (see :meth:`cpu_seconds`); a read, from any state. By default the
        ``cpu_seconds`` of :meth:`_do_usage`: override where it can be read for less."""
        return self._do_usage().cpu_seconds

    def _do_disk_usage(self) -> DiskUsage:
        """Bytes the backend's files of this machine use on the host's storage (see
        :meth:`disk_usage`); a read, called outside the section, from any state. Only called
        where ``capabilities.disk_usage`` is True."""
        raise Unsupported(self.hypervisor.name, "disk_usage")

    def _do_set_network(self, enabled: bool) -> None:
        """Set the link of a RUNNING or PAUSED machine's NIC (the spec has a network)."""
        raise Unsupported(self.hypervisor.name, "set_network")

    def _do_set_cpu_limit(self, percent: int) -> None:
        """Cap CPU use at ``percent`` (1-100, validated), from any state but CRASHED."""
        raise Unsupported(self.hypervisor.name, "set_cpu_limit")

    def _do_screenshot(self, timeout: float) -> bytes:
        """The guest's screen now, as PNG bytes, of a RUNNING or PAUSED machine. Only called
        where ``capabilities.screenshot`` is True."""
        raise Unsupported(self.hypervisor.name, "screenshot")

    def _get_remote_desktop_address(self) -> str | None:
        """``host:port`` of the running machine's remote desktop server, or None."""
        return None

    def _get_pid(self) -> int | None:
        """The host process running the machine, or None. A read that changes nothing."""
        return None

    def _wait_changed(self, last: State, timeout: float) -> None:
        """Block until the state may have changed from ``last`` or ``timeout`` passes.

        The default polls; backends with hypervisor events override it.
        """
        time.sleep(min(POLL_INTERVAL, max(timeout, 0.0)))

    # -- the public verbs --------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The machine's current state, read from the hypervisor."""
        return self._get_state()

    @property
    def managed(self) -> bool:
        """True for a machine vmctl created; False for one it adopted: a VM the hypervisor already
        knew (defined with virsh, virt-manager, another tool), opened with :meth:`Hypervisor.machine`
        or listed by ``Hypervisor.machines(all=True)``. Its :attr:`spec` is read from the
        hypervisor's own configuration, and :meth:`destroy` keeps its disks unless asked."""
        return True

    @property
    def pid(self) -> int | None:
        """The host process running the machine, or None where there is none to see."""
        return self._get_pid()

    def remote_desktop_address(self) -> str | None:
        """Where the machine's remote desktop (VNC) listens, as ``127.0.0.1:PORT``, while the
        machine runs or is paused with ``remote_desktop=True`` in its spec; else None."""
        if not self.spec.remote_desktop or self.state not in (State.RUNNING, State.PAUSED):
            return None
        return self._get_remote_desktop_address()

    @property
    def capabilities(self) -> Capabilities:
        """What this machine can do: its backend's capabilities, less what it lacks itself
        (a QEMU machine without a qcow2 disk has no snapshots)."""
        return self.hypervisor.capabilities

    def _why(self, capability: str) -> str:
        """Why this machine lacks ``capability`` where its backend has it ("" if it does not)."""
        return ""

    @contextlib.contextmanager
    def _checked(self, verb: str, timeout: float, capability: bool = True, why: str = "") -> Iterator[State]:
        """Inside the machine's exclusive section: the state, if ``verb`` is allowed from it."""
        if not capability:
            raise Unsupported(self.hypervisor.name, verb, why)
        with self._exclusive(verb, timeout):
            state = self._get_state()
            allowed = ALLOWED_FROM[verb]
            if state not in allowed:
                raise InvalidState(self.name, verb, state, allowed)
            yield state

    def recover(self, timeout: float = 60) -> State:
        """Finish or undo what a caller killed in the middle of a verb left behind; return the
        state. Every verb does this first, so there is rarely a need to call it."""
        with self._exclusive("recover", timeout):
            return self._get_state()

    def start(self, timeout: float = 60) -> None:
        """Boot a STOPPED or CRASHED machine, or restore a SUSPENDED one. Ends RUNNING."""
        with self._checked("start", timeout) as state:
            log.info("%s: start (from %s)", self.name, state.value)
            self._do_start(timeout)

    def pause(self, timeout: float = 30) -> None:
        """Freeze the running machine in host memory."""
        with self._checked("pause", timeout, self.capabilities.pause):
            log.info("%s: pause", self.name)
            self._do_pause(timeout)

    def resume(self, timeout: float = 30) -> None:
        """Continue a PAUSED machine."""
        with self._checked("resume", timeout, self.capabilities.pause):
            log.info("%s: resume", self.name)
            self._do_resume(timeout)

    def suspend(self, timeout: float = 300) -> None:
        """Save the machine's state to disk and release its host memory and process."""
        with self._checked("suspend", timeout, self.capabilities.suspend):
            log.info("%s: suspend", self.name)
            self._do_suspend(timeout)

    def stop(self, timeout: float = 60) -> bool:
        """Shut down gracefully (ACPI power button); power off by force at the deadline.

        A PAUSED machine is resumed first so that its guest can see the button.
        Returns True if the guest shut down by itself, False if it had to be forced.
        A machine that crashes while shutting down can no longer comply: it is powered off at once
        (no waiting for the deadline) and ends STOPPED, and stop returns False.
        """
        with self._checked("stop", timeout) as state:
            log.info("%s: stop (graceful, %g s)", self.name, timeout)
            if state is State.PAUSED:
                self._do_resume(timeout)
            self._do_request_shutdown()
        try:
            self.wait_for(State.STOPPED, timeout)
            return True
        except OperationTimeout:
            log.warning("%s: guest ignored the power button for %g s; powering off", self.name, timeout)
        except InvalidState as exc:
            if exc.state is not State.CRASHED:
                raise
            log.warning("%s: crashed while shutting down; powering off", self.name)
        with self._exclusive("poweroff", 30):
            if self._get_state() in (State.RUNNING, State.PAUSED, State.CRASHED):
                self._do_poweroff(30)
        return False

    def poweroff(self, timeout: float = 30) -> None:
        """Power off by force, now. From SUSPENDED this discards the saved state."""
        with self._checked("poweroff", timeout):
            log.info("%s: poweroff", self.name)
            self._do_poweroff(timeout)

    def restart(self, hard: bool = False, timeout: float = 60) -> bool:
        """Reboot the guest gracefully, or reset it at once with ``hard=True``.

        A graceful reboot that the guest has not completed by ``timeout`` becomes a hard reset.
        Returns True if the reboot was graceful.
        """
        with self._checked("restart", timeout):
            log.info("%s: restart (%s)", self.name, "hard" if hard else "graceful")
            if not hard:
                if not self.capabilities.graceful_restart:
                    raise Unsupported(self.hypervisor.name, "restart(hard=False)")
                if self._do_reboot(timeout):
                    return True
                log.warning("%s: guest did not reboot within %g s; resetting", self.name, timeout)
            self._do_reset(30)
            return False

    def snapshot(self, name: str, description: str = "", timeout: float = 300) -> Snapshot:
        """Take a snapshot. Of a running or paused machine it includes memory."""
        validate_snapshot_name(name)
        with self._checked("snapshot", timeout, self.capabilities.snapshots, self._why("snapshots")) as state:
            if state is not State.STOPPED and not self.capabilities.live_snapshots:
                raise Unsupported(self.hypervisor.name, "snapshot of a running machine")
            if any(s.name == name for s in self._do_snapshots()):
                raise SnapshotExists(self.name, name)
            log.info("%s: snapshot %s", self.name, name)
            return self._do_snapshot(name, description, timeout)

    def snapshots(self) -> list[Snapshot]:
        """The machine's snapshots, oldest first (:func:`vmctl.display.table` shows them as one)."""
        if not self.capabilities.snapshots:
            raise Unsupported(self.hypervisor.name, "snapshots", self._why("snapshots"))
        return list(self._do_snapshots())

    def _find_snapshot(self, name: str) -> Snapshot:
        from vmctl.errors import SnapshotNotFound

        validate_snapshot_name(name)
        for snap in self._do_snapshots():
            if snap.name == name:
                return snap
        raise SnapshotNotFound(self.name, name)

    def revert(self, name: str, timeout: float = 300) -> None:
        """Return to a snapshot. Ends RUNNING if the snapshot has memory, else STOPPED."""
        validate_snapshot_name(name)
        with self._checked("revert", timeout, self.capabilities.snapshots, self._why("snapshots")):
            snap = self._find_snapshot(name)
            log.info("%s: revert to %s", self.name, name)
            self._do_revert(snap, timeout)

    def delete_snapshot(self, name: str, timeout: float = 300) -> None:
        """Delete a snapshot; the machine's current state is untouched."""
        validate_snapshot_name(name)
        with self._checked("delete_snapshot", timeout, self.capabilities.snapshots, self._why("snapshots")):
            self._find_snapshot(name)
            log.info("%s: delete snapshot %s", self.name, name)
            self._do_delete_snapshot(name, timeout)

    def usage(self) -> Usage:
        """Resource usage now; fields the backend cannot measure are None."""
        return self._do_usage()

    def cpu_seconds(self) -> float | None:
        """The CPU time the machine's host processes have used, as :meth:`usage`'s
        ``cpu_seconds`` (None without a process or where the backend cannot measure it), read
        for as little as the backend can: for a caller that polls CPU time alone, such as
        vmctl-boinc's credit (QEMU: no QMP round trip for disk counters)."""
        return self._do_cpu_seconds()

    def disk_usage(self) -> DiskUsage:
        """Bytes that the files the backend keeps for this machine occupy now on the storage of
        the hypervisor's host (allocated blocks, not apparent sizes): its overlay, snapshots,
        saved state, settings and logs, wherever the backend keeps them. Not counted: the files
        the spec names (the disk image, which ``overlay=False`` writes to, kernel, initrd,
        ``serial_log``) and shared directories, which are the caller's.

        Raises :class:`Unsupported` where the backend cannot know (``capabilities.disk_usage``).
        """
        if not self.capabilities.disk_usage:
            raise Unsupported(self.hypervisor.name, "disk_usage")
        return self._do_disk_usage()

    def screenshot(self, timeout: float = 30) -> Screenshot:
        """The guest's screen now, as a :class:`~vmctl.screenshot.Screenshot` (PNG bytes in
        ``.png``, shown as an image in a notebook), of a RUNNING or PAUSED machine.

        Raises :class:`Unsupported` where the backend or this machine has no screen to read
        (``capabilities.screenshot``), :class:`InvalidState` in any other state.
        """
        with self._checked("screenshot", timeout, self.capabilities.screenshot, self._why("screenshot")):
            png = self._do_screenshot(timeout)
        return Screenshot(png)

    def set_network(self, enabled: bool) -> None:
        """Set the guest's network link up or down (a cable pulled, the NIC still there)."""
        with self._checked("set_network", 30, self.capabilities.network_toggle):
            if self.spec.network is None:
                raise InvalidSpec("network", f"machine {self.name!r} was created without a network")
            log.info("%s: network %s", self.name, "up" if enabled else "down")
            self._do_set_network(bool(enabled))

    def set_cpu_limit(self, percent: int) -> None:
        """Cap the machine's CPU use at ``percent`` of one host CPU per virtual CPU (1-100)."""
        if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 100:
            raise InvalidSpec("cpu limit", f"{percent!r} is not a percentage from 1 to 100")
        with self._checked("set_cpu_limit", 30, self.capabilities.cpu_limit):
            self._do_set_cpu_limit(percent)

    def wait_for(self, states: State | Iterable[State], timeout: float = 60) -> State:
        """Wait until the machine is in one of ``states``; return that state.

        Raises :class:`OperationTimeout` at the deadline, and :class:`InvalidState` if the machine
        crashes while something else is awaited.
        """
        wanted = {states} if isinstance(states, State) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            state = self._get_state()
            if state in wanted:
                return state
            if state is State.CRASHED:
                raise InvalidState(self.name, "wait for " + "/".join(sorted(s.value for s in wanted)), state)
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimeout(f"{self.name}: waiting for {'/'.join(sorted(s.value for s in wanted))}", timeout)
            self._wait_changed(state, left)

    def state_changes(self, timeout: float | None = None) -> Iterator[State]:
        """Yield the machine's state each time it changes (the current one first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: State | None = None
        while deadline is None or time.monotonic() < deadline:
            state = self._get_state()
            if state is not last:
                last = state
                yield state
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._wait_changed(state, left)

    def destroy(self, timeout: float = 60, *, delete_disks: bool = False) -> None:
        """Power off if needed, then undefine: delete the overlay, saved state and snapshots.

        The base image is never touched. An adopted machine (:attr:`managed` False) is undefined
        and its saved state discarded, but its disk images, which vmctl did not make, are kept
        unless ``delete_disks=True``. On vmctl's own machines ``delete_disks`` changes nothing:
        what vmctl made is always deleted, the base image never.
        """
        if not isinstance(delete_disks, bool):
            raise InvalidSpec("delete_disks", f"{delete_disks!r} is not a boolean")
        managed = self.managed
        log.info("%s: destroy%s", self.name, "" if managed else f" (adopted, delete_disks={delete_disks})")
        with self._exclusive("destroy", timeout):
            if self._get_state() in (State.RUNNING, State.PAUSED):
                self._do_poweroff(timeout)
            if managed:
                self._do_destroy(timeout)
            else:
                self._do_destroy_adopted(timeout, delete_disks)


class Hypervisor(ABC):
    """A connection to one backend. Use as a context manager, or call :meth:`close`."""

    name: ClassVar[str] = "?"
    #: why a spec feature the capabilities lack is missing, by :data:`~vmctl.types.SPEC_FEATURES`
    #: name (part of the :class:`Unsupported` message of :meth:`create`)
    _feature_notes: ClassVar[Mapping[str, str]] = {}

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def _do_create(self, spec: MachineSpec) -> Machine: ...

    @abstractmethod
    def _machine_names(self) -> list[str]: ...

    def _all_machine_names(self) -> list[str]:
        """Every machine the hypervisor knows, vmctl's and adoptable ones (default: vmctl's)."""
        return self._machine_names()

    @abstractmethod
    def _open_machine(self, name: str) -> Machine:
        """Return a handle to any machine the hypervisor knows by ``name``, vmctl's or not
        (:attr:`Machine.managed` tells them apart); raise MachineNotFound if there is none."""

    def create(self, spec: MachineSpec) -> Machine:
        """Define a machine from ``spec``; it starts STOPPED.

        Raises :class:`MachineExists` if the name is taken.
        """
        if not isinstance(spec, MachineSpec):
            raise InvalidSpec("spec", f"{spec!r} is not a vmctl.MachineSpec")
        refused = self.capabilities.refused_features(spec)
        if refused:
            why = "; ".join(f"{SPEC_FEATURES[f]}: {self._feature_notes.get(f, 'not offered')}" for f in refused)
            raise Unsupported(self.name, "create", why)
        log.info("%s: create on %s", spec.name, self.name)
        return self._do_create(spec)

    def machine(self, name: str) -> Machine:
        """The machine called ``name``, vmctl's own or one the hypervisor knows from elsewhere
        (adopted: :attr:`Machine.managed` is False); raises :class:`MachineNotFound`."""
        validate_name(name)
        return self._open_machine(name)

    def machines(self, all: bool = False) -> list[Machine]:
        """Every machine vmctl created on this connection, sorted by name; with ``all=True`` also
        every other machine the hypervisor knows (adopted, :attr:`Machine.managed` False) whose
        name vmctl accepts (:func:`vmctl.display.table` shows them as one)."""
        names = self._machine_names()
        if all:
            names = []
            for name in self._all_machine_names():
                try:
                    names.append(validate_name(name))
                except InvalidSpec:
                    log.info("%s: skipping machine %r: vmctl cannot address its name", self.name, name)
        found: list[Machine] = []
        for name in sorted(set(names)):
            try:
                found.append(self._open_machine(name))
            except MachineNotFound:  # destroyed meanwhile by another process
                continue
        return found

    def import_appliance(
        self, path: str | os.PathLike[str], name: str | None = None, *, timeout: float = 1800, **spec: Any
    ) -> Machine:
        """Create a machine from an OVF appliance: an ``.ova`` file, or an ``.ovf`` descriptor with
        its disk files beside it. It starts STOPPED, with the appliance's memory, CPUs and disk
        (a NAT network if the appliance has a network adapter), named ``name`` or, by default,
        as the appliance's virtual system (its ``ovf:id``). Keyword arguments ``spec`` are
        :class:`~vmctl.types.MachineSpec` fields that replace or add to what the appliance says
        (``memory_mib``, ``network`` with port forwards, ``serial_log``, ``shared_dirs``, or
        ``kernel``/``initrd``/``cmdline`` for a disk without a boot loader); ``name``, ``disk``
        and ``overlay`` are the import's own. A field the backend cannot honour raises :class:`Unsupported`
        (vSphere's importer takes ``memory_mib`` and ``cpus`` only).

        The appliance is read as a stranger's file (see :mod:`vmctl.appliance`): an unsafe one
        raises :class:`~vmctl.appliance.UnsafeAppliance`, a malformed one
        :class:`~vmctl.appliance.InvalidAppliance` (both :class:`InvalidSpec`), a manifest
        mismatch :class:`~vmctl.appliance.ManifestMismatch`; nothing is created then. Raises
        :class:`MachineExists` if the name is taken, :class:`Unsupported` where the backend
        cannot import (or not this appliance, e.g. one with several disks).
        """
        if name is not None:
            validate_name(name)
        own = {"name", "disk", "overlay"}
        unknown = sorted(k for k in spec if k in own or k not in MachineSpec.__dataclass_fields__)
        if unknown:
            raise InvalidSpec("import_appliance", "not MachineSpec fields an import takes: " + ", ".join(unknown))
        source = Path(path).expanduser().absolute()
        if not source.is_file():
            raise InvalidSpec("appliance", f"{source} does not exist or is not a regular file")
        log.info("import appliance %s on %s", source, self.name)
        return self._do_import_appliance(source, name, dict(spec), timeout)

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        """Import the appliance at ``path`` (an existing file) as machine ``name`` (validated;
        None: the appliance's own name), with the MachineSpec fields ``spec`` (names checked)
        replacing the appliance's. Backends read it with :func:`vmctl.appliance.open_appliance`."""
        raise Unsupported(self.name, "import_appliance", "this backend cannot import appliances")

    def usage_all(self) -> dict[str, Usage]:
        """Usage of every machine, keyed by name. Backends with a bulk call do it in one."""
        result: dict[str, Usage] = {}
        for vm in self.machines():
            result[vm.name] = vm.usage()
        return result

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release the connection. Machines keep running."""

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
