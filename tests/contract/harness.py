"""Moved to :mod:`vmctl.testing`; kept for the tests that import it from here."""

from vmctl.testing import GuestProbe, Harness, SimulatedGuestProbe, wait_until

__all__ = ["GuestProbe", "Harness", "SimulatedGuestProbe", "wait_until"]
