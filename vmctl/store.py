"""Moved to :mod:`vmctl.backend.store`; this name stays for one release."""

from vmctl.backend.store import LOCK, RECORD, MachineStore, atomic_write, default_state_dir, flock_exclusive

__all__ = ["LOCK", "RECORD", "MachineStore", "atomic_write", "default_state_dir", "flock_exclusive"]
