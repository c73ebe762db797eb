"""The one lifecycle interface every backend implements.

Backends subclass :class:`Hypervisor` and :class:`Machine` and implement the ``_do_*``
methods. The public verbs live here, once: they check the machine's state against one
transition table and the backend's :class:`~vmctl.types.Capabilities`, so that a verb means the
same thing on every backend and an impossible one raises a typed error.

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

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from vmctl.errors import InvalidSpec, InvalidState, MachineNotFound, OperationTimeout, Unsupported
from vmctl.types import Capabilities, MachineSpec, Snapshot, State, Usage, validate_name, validate_snapshot_name

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

    @abstractmethod
    def _get_state(self) -> State: ...

    @abstractmethod
    def _do_start(self, timeout: float) -> None: ...

    @abstractmethod
    def _do_poweroff(self, timeout: float) -> None: ...

    @abstractmethod
    def _do_destroy(self, timeout: float) -> None: ...

    def _do_pause(self, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "pause")

    def _do_resume(self, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "resume")

    def _do_suspend(self, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "suspend")

    def _do_request_shutdown(self) -> None:
        """Ask the guest to shut down (ACPI power button); return at once."""
        raise Unsupported(self.hypervisor.name, "stop")

    def _do_reset(self, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "restart")

    def _do_reboot(self, timeout: float) -> bool:
        """Graceful reboot; return False if the guest did not comply by the deadline."""
        raise Unsupported(self.hypervisor.name, "restart", "no graceful reboot")

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        raise Unsupported(self.hypervisor.name, "snapshot")

    def _do_snapshots(self) -> list[Snapshot]:
        raise Unsupported(self.hypervisor.name, "snapshots")

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "revert")

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        raise Unsupported(self.hypervisor.name, "delete_snapshot")

    def _do_usage(self) -> Usage:
        return Usage(machine=self.name)

    def _do_set_network(self, enabled: bool) -> None:
        raise Unsupported(self.hypervisor.name, "set_network")

    def _do_set_cpu_limit(self, percent: int) -> None:
        raise Unsupported(self.hypervisor.name, "set_cpu_limit")

    def _get_pid(self) -> int | None:
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
    def pid(self) -> int | None:
        """The host process running the machine, or None where there is none to see."""
        return self._get_pid()

    @property
    def capabilities(self) -> Capabilities:
        return self.hypervisor.capabilities

    def _require(self, verb: str, capability: bool = True, why: str = "") -> State:
        if not capability:
            raise Unsupported(self.hypervisor.name, verb, why)
        state = self._get_state()
        allowed = ALLOWED_FROM[verb]
        if state not in allowed:
            raise InvalidState(self.name, verb, state, allowed)
        return state

    def start(self, timeout: float = 60) -> None:
        """Boot a STOPPED or CRASHED machine, or restore a SUSPENDED one. Ends RUNNING."""
        state = self._require("start")
        log.info("%s: start (from %s)", self.name, state.value)
        self._do_start(timeout)

    def pause(self, timeout: float = 30) -> None:
        """Freeze the running machine in host memory."""
        self._require("pause", self.capabilities.pause)
        log.info("%s: pause", self.name)
        self._do_pause(timeout)

    def resume(self, timeout: float = 30) -> None:
        """Continue a PAUSED machine."""
        self._require("resume", self.capabilities.pause)
        log.info("%s: resume", self.name)
        self._do_resume(timeout)

    def suspend(self, timeout: float = 300) -> None:
        """Save the machine's state to disk and release its host memory and process."""
        self._require("suspend", self.capabilities.suspend)
        log.info("%s: suspend", self.name)
        self._do_suspend(timeout)

    def stop(self, timeout: float = 60) -> bool:
        """Shut down gracefully (ACPI power button); power off by force at the deadline.

        A PAUSED machine is resumed first so that its guest can see the button.
        Returns True if the guest shut down by itself, False if it had to be forced.
        A machine that crashes while shutting down can no longer comply: it is powered off at once
        (no waiting for the deadline) and ends STOPPED, and stop returns False.
        """
        state = self._require("stop")
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
        if self._get_state() is not State.STOPPED:
            self._do_poweroff(30)
        return False

    def poweroff(self, timeout: float = 30) -> None:
        """Power off by force, now. From SUSPENDED this discards the saved state."""
        self._require("poweroff")
        log.info("%s: poweroff", self.name)
        self._do_poweroff(timeout)

    def restart(self, hard: bool = False, timeout: float = 60) -> bool:
        """Reboot the guest gracefully, or reset it at once with ``hard=True``.

        A graceful reboot that the guest has not completed by ``timeout`` becomes a hard reset.
        Returns True if the reboot was graceful.
        """
        self._require("restart")
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
        state = self._require("snapshot", self.capabilities.snapshots)
        if state is not State.STOPPED and not self.capabilities.live_snapshots:
            raise Unsupported(self.hypervisor.name, "snapshot of a running machine")
        if any(s.name == name for s in self._do_snapshots()):
            raise InvalidSpec("snapshot name", f"machine {self.name!r} already has a snapshot {name!r}")
        log.info("%s: snapshot %s", self.name, name)
        return self._do_snapshot(name, description, timeout)

    def snapshots(self) -> list[Snapshot]:
        """The machine's snapshots, oldest first (:func:`vmctl.display.table` shows them as one)."""
        if not self.capabilities.snapshots:
            raise Unsupported(self.hypervisor.name, "snapshots")
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
        self._require("revert", self.capabilities.snapshots)
        snap = self._find_snapshot(name)
        log.info("%s: revert to %s", self.name, name)
        self._do_revert(snap, timeout)

    def delete_snapshot(self, name: str, timeout: float = 300) -> None:
        """Delete a snapshot; the machine's current state is untouched."""
        self._require("delete_snapshot", self.capabilities.snapshots)
        self._find_snapshot(name)
        log.info("%s: delete snapshot %s", self.name, name)
        self._do_delete_snapshot(name, timeout)

    def usage(self) -> Usage:
        """Resource usage now; fields the backend cannot measure are None."""
        return self._do_usage()

    def set_network(self, enabled: bool) -> None:
        """Set the guest's network link up or down (a cable pulled, the NIC still there)."""
        self._require("set_network", self.capabilities.network_toggle)
        if self.spec.network is None:
            raise InvalidSpec("network", f"machine {self.name!r} was created without a network")
        log.info("%s: network %s", self.name, "up" if enabled else "down")
        self._do_set_network(bool(enabled))

    def set_cpu_limit(self, percent: int) -> None:
        """Cap the machine's CPU use at ``percent`` of one host CPU per virtual CPU (1-100)."""
        if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 100:
            raise InvalidSpec("cpu limit", f"{percent!r} is not a percentage from 1 to 100")
        self._require("set_cpu_limit", self.capabilities.cpu_limit)
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

    def destroy(self, timeout: float = 60) -> None:
        """Power off if needed, then undefine: delete the overlay, saved state and snapshots.

        The base image is never touched.
        """
        log.info("%s: destroy", self.name)
        if self._get_state() in (State.RUNNING, State.PAUSED):
            self._do_poweroff(timeout)
        self._do_destroy(timeout)


class Hypervisor(ABC):
    """A connection to one backend. Use as a context manager, or call :meth:`close`."""

    name: ClassVar[str] = "?"

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def _do_create(self, spec: MachineSpec) -> Machine: ...

    @abstractmethod
    def _machine_names(self) -> list[str]: ...

    @abstractmethod
    def _open_machine(self, name: str) -> Machine:
        """Return a handle; raise MachineNotFound if no such machine exists."""

    def create(self, spec: MachineSpec) -> Machine:
        """Define a machine from ``spec``; it starts STOPPED.

        Raises :class:`MachineExists` if the name is taken.
        """
        if not isinstance(spec, MachineSpec):
            raise InvalidSpec("spec", f"{spec!r} is not a vmctl.MachineSpec")
        log.info("%s: create on %s", spec.name, self.name)
        return self._do_create(spec)

    def machine(self, name: str) -> Machine:
        """The machine called ``name``; raises :class:`MachineNotFound`."""
        validate_name(name)
        return self._open_machine(name)

    def machines(self) -> list[Machine]:
        """Every machine this connection manages, sorted by name (:func:`vmctl.display.table`
        shows them as one)."""
        found: list[Machine] = []
        for name in sorted(self._machine_names()):
            try:
                found.append(self._open_machine(name))
            except MachineNotFound:  # destroyed meanwhile by another process
                continue
        return found

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
