"""What the adapter leaves for the project when a task ends in error: the VM's screen and the
hypervisor's log.

Before the VM is deleted, its screen is saved in the slot as ``vm_screenshot.png`` (what
vboxwrapper's ``enable_screenshots_on_error`` does, here on every error) and the last lines of
the hypervisor's own log (QEMU's ``qemu.log``, VirtualBox's ``VBox.log``) go to stderr.txt
beside the guest console's tail. Both are best effort and bounded: a VM that is off has no
screen, a backend may have no screenshot or no log; what fails is logged, never raised, so that
diagnosis never changes how the task ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

import vmctl
from vmctl.boinc._safefs import write_exclusive

__all__ = ["LOG_TAIL_BYTES", "LOG_TAIL_LINES", "SCREENSHOT_FILE", "diagnose"]

log = logging.getLogger("vmctl.boinc")

#: The screenshot's name in the slot.
SCREENSHOT_FILE = "vm_screenshot.png"
#: The largest screenshot kept (a PNG of a text or 1080p screen is far smaller).
MAX_SCREENSHOT_BYTES = 8 * 1024 * 1024
#: How much of the hypervisor's log reaches stderr.txt.
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8 * 1024
SCREENSHOT_TIMEOUT = 10.0


def diagnose(vm: vmctl.Machine | None, slot: Path) -> None:
    """Save ``vm``'s screen into ``slot`` and log its hypervisor's log tail; never raises."""
    if vm is None:
        return
    save_screenshot(vm, slot)
    log_hypervisor_tail(vm)


def save_screenshot(vm: vmctl.Machine, slot: Path) -> bool:
    """Write ``vm``'s screen to ``slot/vm_screenshot.png`` (a link there is replaced, not followed)."""
    try:
        shot = vm.screenshot(timeout=SCREENSHOT_TIMEOUT)
        if len(shot.png) > MAX_SCREENSHOT_BYTES:
            log.info("no screenshot of the VM: %d bytes is more than %d", len(shot.png), MAX_SCREENSHOT_BYTES)
            return False
        write_exclusive(slot / SCREENSHOT_FILE, shot.png)
    except Exception as exc:  # best effort: the task's ending must not change
        log.info("no screenshot of the VM: %s", exc)
        return False
    log.info("the VM's screen (%dx%d) is saved in %s", shot.width, shot.height, SCREENSHOT_FILE)
    return True


def hypervisor_log_tail(vm: vmctl.Machine) -> list[str]:
    """The last lines of the hypervisor's log of ``vm`` where its backend keeps one, else []."""
    read = getattr(vm, "hypervisor_log", None)
    if read is None:
        return []
    try:
        text = read(LOG_TAIL_BYTES)
    except Exception as exc:
        log.info("cannot read the hypervisor's log: %s", exc)
        return []
    if not isinstance(text, str):
        return []
    lines = text.splitlines()
    if len(text.encode()) >= LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line is cut
    return lines[-LOG_TAIL_LINES:]


def log_hypervisor_tail(vm: vmctl.Machine) -> None:
    lines = hypervisor_log_tail(vm)
    if lines:
        log.info("last lines of the hypervisor's log:\n  %s", "\n  ".join(lines))
