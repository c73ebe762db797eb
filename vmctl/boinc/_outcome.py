"""How a run of the adapter ends: BOINC's exit codes, the exceptions that carry an ending out of
the loop, and the back-off after hypervisor trouble.

The adapter's parts raise :class:`Done` once the files that end the run are written,
:class:`Trouble` when the hypervisor fails for the moment (the run ends with a temporary exit,
retried after :func:`trouble_delay`), and :class:`Fatal` when the task cannot succeed. Only the
adapter's loop catches them; they never leave :class:`~vmctl.boinc.adapter.Adapter`.

>>> [trouble_delay(n) for n in (1, 2, 3, 8)]
[30.0, 60.0, 120.0, 3600.0]
"""

from __future__ import annotations

__all__ = [
    "EXIT_ABORTED_BY_CLIENT",
    "EXIT_CHILD_FAILED",
    "EXIT_INIT_FAILURE",
    "TROUBLE_BASE_DELAY",
    "TROUBLE_MAX_DELAY",
    "Done",
    "Fatal",
    "Trouble",
    "trouble_delay",
]

# BOINC's exit codes (lib/common_defs.h)
EXIT_ABORTED_BY_CLIENT = 194
EXIT_CHILD_FAILED = 195
EXIT_INIT_FAILURE = 206

TROUBLE_BASE_DELAY = 30.0
TROUBLE_MAX_DELAY = 3600.0


def trouble_delay(count: int, base: float = TROUBLE_BASE_DELAY) -> float:
    """Seconds before the client retries after the ``count``-th hypervisor trouble in a row:
    ``base`` (30 s), twice that, four times, ... at most an hour."""
    return min(base * float(1 << min(max(count - 1, 0), 20)), TROUBLE_MAX_DELAY)


class Done(Exception):
    """The run is over with this exit code (end-of-run files already written)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Trouble(Exception):
    """Hypervisor trouble; the run ends with a temporary exit."""


class Fatal(Exception):
    """The task cannot succeed (job or image error); the run ends with ``code``."""

    def __init__(self, message: str, code: int = EXIT_INIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
