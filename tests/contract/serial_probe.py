"""Moved to :mod:`vmctl.testing`; kept for the tests that import it from here."""

from vmctl.testing import SerialLogProbe

__all__ = ["SerialLogProbe"]
