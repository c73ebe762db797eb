"""Moved to :mod:`vmctl.backend.tools`; this name stays for one release."""

from vmctl.backend.tools import c_locale_env, run_tool

__all__ = ["c_locale_env", "run_tool"]
