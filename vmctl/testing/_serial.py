"""A guest probe for real guests: reads what vmctl's test guest prints on its serial console."""

from __future__ import annotations

import re
from pathlib import Path

from vmctl.testing._harness import GuestProbe

__all__ = ["SerialLogProbe"]

_TICK = re.compile(rb"VMCTL-GUEST TICK n=(\d+)")
_LINK = re.compile(rb"VMCTL-GUEST LINK (up|down)")


class SerialLogProbe(GuestProbe):
    """Parses the test guest's console log (kept across boots and restores, append mode).

    Use it for a backend that boots :func:`vmctl.testguest.ensure_test_guest` with
    ``MachineSpec.serial_log`` set.

    >>> import pathlib, tempfile
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "console.log"
    >>> _ = log.write_bytes(b"VMCTL-GUEST BOOT\\nVMCTL-GUEST READY\\nVMCTL-GUEST TICK n=7\\n")
    >>> probe = SerialLogProbe(log)
    >>> probe.ready(), probe.counter(), probe.boots()
    (True, 7, 1)
    """

    def __init__(self, log: Path) -> None:
        self.log = log

    def _text(self) -> bytes:
        try:
            return self.log.read_bytes()
        except FileNotFoundError:
            return b""

    def _since_last_boot(self) -> bytes:
        text = self._text()
        return text[text.rfind(b"VMCTL-GUEST BOOT") :] if b"VMCTL-GUEST BOOT" in text else b""

    def ready(self) -> bool:
        return b"VMCTL-GUEST READY" in self._since_last_boot()

    def counter(self) -> int:
        ticks = _TICK.findall(self._text())
        return int(ticks[-1]) if ticks else 0

    def power_button_presses(self) -> int:
        return self._text().count(b"VMCTL-GUEST POWERBUTTON")

    def boots(self) -> int:
        return self._text().count(b"VMCTL-GUEST BOOT")

    def link_up(self) -> bool | None:
        links = _LINK.findall(self._since_last_boot())
        return links[-1] == b"up" if links else None
