"""Moved to :mod:`vmctl.backend.aio`; this name stays for one release."""

from vmctl.backend.aio import loop, run_sync

__all__ = ["loop", "run_sync"]
