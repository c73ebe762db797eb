"""The guest's screen over QMP: ``screendump`` into a private directory, read back bounded.

vmctl's machines have a standard VGA adapter (``-device VGA``: its text console shows the
firmware's and the kernel's messages, and a framebuffer when the guest sets one) but no display
window (``-display none``); ``screendump`` reads the adapter's screen all the same. QEMU 7.1 and
later write PNG (``format: png``); an older QEMU refuses the argument and writes PPM, which is
converted here (:func:`vmctl.screenshot.png_from_ppm`, zlib only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from vmctl.errors import BackendError, ErrorCode, Unsupported
from vmctl.screenshot import as_png, private_dir, read_bounded

from . import _qmp

__all__ = ["DISPLAY_ARGV", "DISPLAY_KEY", "NO_DISPLAY", "screendump"]

#: The record key saying that the machine was made with a display adapter (machines made before
#: had none, and a saved state or snapshot of theirs would not load into a QEMU that has one).
DISPLAY_KEY = "display"
#: QEMU's options for the display adapter of a machine whose record has ``display: "vga"``.
DISPLAY_ARGV = ("-device", "VGA,id=video0")
NO_DISPLAY = (
    "the machine has no display adapter (made by a vmctl older than screenshots, or a QEMU "
    "started without one); recreate it"
)


def display_argv(record: dict[str, object]) -> list[str]:
    """QEMU's display options for a machine with this record."""
    return list(DISPLAY_ARGV) if record.get(DISPLAY_KEY) == "vga" else []


def _no_console(exc: BackendError) -> bool:
    text = str(exc).lower()
    return "no qemuconsole" in text or "no console" in text or "no graphic" in text


def screendump(
    monitor: Callable[[float], contextlib.AbstractContextManager[_qmp.QmpSession]], backend: str, timeout: float
) -> bytes:
    """PNG bytes of the screen of the QEMU behind ``monitor`` (a session factory)."""
    with private_dir() as directory:
        target = directory / "screen"
        arguments: dict[str, str] = {"filename": str(target), "format": "png"}
        with monitor(timeout) as session:
            try:
                session.execute("screendump", arguments, timeout=timeout)
            except BackendError as exc:
                if _no_console(exc):
                    raise Unsupported(backend, "screenshot", NO_DISPLAY) from exc
                if exc.code is ErrorCode.UNKNOWN and "format" in str(exc):  # QEMU < 7.1: PPM only
                    session.execute("screendump", {"filename": str(target)}, timeout=timeout)
                else:
                    raise
        return as_png(read_bounded(target))
