"""What the contract suite needs from each backend under test: a :class:`Harness` and a :class:`GuestProbe`.

A harness knows how to connect, how to make a bootable spec, and how to look inside the guest, so
that the suite checks what verbs did to the guest itself, not only the hypervisor's idea of its
state. Its class attributes say what the backend and the peer under test can do; tests that need
more are deselected for that harness (never skipped silently).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vmctl

__all__ = ["GuestProbe", "Harness", "SimulatedGuestProbe", "wait_until"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test at the deadline.

    >>> wait_until(lambda: 42, timeout=1, what="the answer")
    42
    >>> wait_until(lambda: 0, timeout=0.05, what="nothing", interval=0.01)
    Traceback (most recent call last):
    AssertionError: timed out after 0.05 s waiting for nothing
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class GuestProbe(ABC):
    """A view into one machine's guest."""

    @abstractmethod
    def ready(self) -> bool:
        """The guest has booted (its init is up) since the last boot."""

    @abstractmethod
    def counter(self) -> int:
        """A counter in guest RAM that advances while the guest runs (0 before the first boot)."""

    @abstractmethod
    def power_button_presses(self) -> int:
        """How many times the guest saw the ACPI power button."""

    @abstractmethod
    def boots(self) -> int:
        """How many times the guest has booted (a reboot or reset adds one)."""

    def link_up(self) -> bool | None:
        """The guest's view of its NIC's link, or None if it has no NIC."""
        return None

    def wait_ready(self, timeout: float) -> None:
        wait_until(self.ready, timeout, "the guest to boot")

    def wait_counter_above(self, value: int, timeout: float) -> int:
        return int(wait_until(lambda: (c := self.counter()) > value and c, timeout, f"guest counter > {value}"))


class SimulatedGuestProbe(GuestProbe):
    """A guest simulated by a tool simulator, whose state it reports as a dict with the keys
    ``ready``, ``counter``, ``presses``, ``boots`` and ``link_up``."""

    @abstractmethod
    def _view(self) -> dict[str, Any]: ...

    def ready(self) -> bool:
        return bool(self._view()["ready"])

    def counter(self) -> int:
        return int(self._view()["counter"])

    def power_button_presses(self) -> int:
        return int(self._view()["presses"])

    def boots(self) -> int:
        return int(self._view()["boots"])

    def link_up(self) -> bool | None:
        value = self._view()["link_up"]
        return None if value is None else bool(value)


class Harness(ABC):
    """One backend configuration under test.

    Register the class (or a list of classes) in the entry point group ``vmctl.harnesses``; the
    pytest plugin then runs the contract suite against it with ``pytest --vmctl-backend=ID``.
    One instance serves the whole session: :meth:`setup` once before the first test that uses it,
    :meth:`teardown` at the end of the session.
    """

    #: pytest id, e.g. "qemu", "libvirt-test", "virtualbox-sim"
    id: str = "?"
    #: the vmctl backend it tests (the name given to vmctl.connect); ``--vmctl-backend`` also matches it
    backend: str = ""
    #: seconds a guest takes to boot here
    boot_timeout: float = 60
    #: another process can open the same machine (not an in-process backend)
    multi_process: bool = True
    #: the guest really runs: CPU time and counters come from a real guest
    real_guest: bool = True
    #: the probe sees inside the guest: its RAM counter, power-button presses and link
    #: (a harness without a guest still reports boots and readiness from the hypervisor)
    guest_view: bool = True
    #: a guest that ignores the power button can be made (forced-stop test)
    can_ignore_power_button: bool = True
    #: the hypervisor process can be killed (crash test)
    can_crash: bool = True
    #: verbs the backend supports but the peer under test (a simulator) does not implement:
    #: the contract expects them to raise Unsupported there
    peer_lacks: frozenset[str] = frozenset()
    #: rounds of the two-caller race (each one verb sent by both callers at once); enough to
    #: provoke a race, few enough to keep the suite fast on a slow peer. A fifth of them must
    #: see both calls in flight together; on a busy host the test runs up to five times as many
    #: rounds until they do
    race_rounds: int = 40
    #: the machines under test are made outside vmctl (by :meth:`create`) and adopted: the
    #: contract then expects ``Machine.managed`` False and every verb to work all the same
    adopted: bool = False

    def tool_environment(self) -> dict[str, str]:
        """Environment variables under which ``vmctl.backends()`` finds the peer's tools with no
        options (a simulator's directory on ``PATH``, say). Set only while the test that checks
        this runs: the harness lives for the whole session, and a variable it left set would
        make every later test see the tool installed."""
        return {}

    @abstractmethod
    def connect(self) -> vmctl.Hypervisor:
        """The connection the tests use (the same one each call is fine)."""

    @abstractmethod
    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        """A bootable spec. ``ignore_power_button``: a guest that never honours ACPI shutdown."""

    @abstractmethod
    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        """A view into ``vm``'s guest."""

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        """Make the machine ``spec`` describes and return it STOPPED. The default is
        ``hv.create(spec)``; an :attr:`adopted` harness defines it with the hypervisor's own
        tools (virsh, a QEMU command line) and opens it with ``hv.machine(name)``."""
        return self.connect().create(spec)

    def connect_code(self) -> str:
        """Python source, run in a fresh interpreter, that binds ``hv`` to a new connection
        (needed when :attr:`multi_process` is true)."""
        raise NotImplementedError

    def spec_code(self, name: str) -> str:
        """A Python expression, evaluated after :meth:`connect_code`, building ``self.spec(name)``."""
        raise NotImplementedError

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        """Make the machine's hypervisor process die as if it crashed (needed when :attr:`can_crash`)."""
        raise NotImplementedError

    def leftovers(self, name: str) -> list[str]:
        """Processes, files or registrations of ``name`` still present (should be none after destroy)."""
        return []

    def setup(self, tmp: Path) -> None:  # noqa: B027 - optional hook
        """Called once before the backend's tests with a private directory."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Called once after; must remove every machine the tests left."""
