"""The contract suite as a product: what a backend package needs to run it against itself.

A backend ships a :class:`Harness` (how to connect, how to make a bootable spec, how to look into
the guest through a :class:`GuestProbe`) and registers it in the ``vmctl.harnesses`` entry point
group; ``pytest --vmctl-backend=NAME`` then runs the suite (``vmctl.testing.contract``) against
it, through the pytest plugin :mod:`vmctl.testing.plugin`. See docs/contract-suite.md.

>>> from vmctl.testing import Harness, HARNESS_GROUP
>>> HARNESS_GROUP
'vmctl.harnesses'
>>> sorted(a for a in vars(Harness) if a in {"multi_process", "guest_view", "can_crash"})
['can_crash', 'guest_view', 'multi_process']
"""

from vmctl.testing._harness import GuestProbe, Harness, SimulatedGuestProbe, wait_until
from vmctl.testing._registry import HARNESS_GROUP, HarnessError, Registered
from vmctl.testing._serial import SerialLogProbe

__all__ = [
    "HARNESS_GROUP",
    "GuestProbe",
    "Harness",
    "HarnessError",
    "Registered",
    "SerialLogProbe",
    "SimulatedGuestProbe",
    "wait_until",
]
