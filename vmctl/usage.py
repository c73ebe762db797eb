"""Moved to :mod:`vmctl.backend.usage`; this name stays for one release."""

from vmctl.backend.usage import ProcessUsage, pid_alive, process_tree_usage

__all__ = ["ProcessUsage", "pid_alive", "process_tree_usage"]
