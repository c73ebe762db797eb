"""What the BOINC Manager shows for the task: its web graphics URL and its remote desktop.

As vboxwrapper does (``report_web_graphics_url``, ``report_remote_desktop_info``) through the
app library (``boinc_web_graphics_url``, ``boinc_remote_desktop_addr``): one message each on the
``graphics_reply`` channel, ``<web_graphics_url>http://localhost:PORT</web_graphics_url>`` for the
host side of the job's web graphics port forward (not when the app version has a
``graphics_app``), and ``<remote_desktop_addr>localhost:PORT</remote_desktop_addr>`` for the VM's
remote desktop. The client keeps the last of each for the task (``boinccmd``'s GUI RPC
``get_results`` shows them) and the Manager's "Show graphics" and "Show VM Console" buttons use
them. Each is sent again whenever it changes (a restored VM may get another port) and once per run
of the adapter.

>>> graphics_message("web_graphics_url", "http://localhost:8080")
'<web_graphics_url>http://localhost:8080</web_graphics_url>'
>>> graphics_message("remote_desktop_addr", "localhost:5901")
'<remote_desktop_addr>localhost:5901</remote_desktop_addr>'
"""

from __future__ import annotations

import logging
import os

import vmctl
from vmctl.boinc._task import Task
from vmctl.boinc.shm import Channel, SharedMemory

__all__ = ["GRAPHICS_APP", "Graphics", "graphics_message"]

log = logging.getLogger("vmctl.boinc")

GRAPHICS_APP = "graphics_app"
"""An app version's own graphics program in the slot: then no web graphics URL (vboxwrapper)."""


def graphics_message(tag: str, value: str) -> str:
    """One graphics_reply message (``web_graphics_url`` or ``remote_desktop_addr``)."""
    return f"<{tag}>{value}</{tag}>"


class Graphics:
    """The task's graphics reports; :meth:`poll` once a second while the VM runs."""

    def __init__(self, task: Task, shm: SharedMemory) -> None:
        self._task = task
        self._shm = shm
        self._sent: dict[str, str] = {}
        self._said_unsupported = False
        self._address: str | None = None
        self._asked_pid: int | None = None

    def remote_desktop(self, capabilities: vmctl.Capabilities) -> bool:
        """Whether the VM gets a remote desktop: the job asks and the backend can (else said once:
        the task runs without, as vboxwrapper's does without VirtualBox's extension pack)."""
        if not self._task.job.remote_desktop:
            return False
        if capabilities.remote_desktop:
            return True
        if not self._said_unsupported:
            log.warning("remote desktop: the %s backend has none; the task runs without", self._task.job.backend)
            self._said_unsupported = True
        return False

    def web_url(self) -> str | None:
        port = self._task.job.web_graphics_guest_port
        if not port or os.path.lexists(self._task.slot.path / GRAPHICS_APP):
            return None
        host = self._task.state.extra.get("host_ports", {}).get(str(port))
        return f"http://localhost:{host}" if host else None

    def _remote_desktop_address(self, vm: vmctl.Machine | None, pid: int | None) -> str | None:
        """The VM's remote desktop, asked again only when its host process changed."""
        if not self._task.job.remote_desktop or vm is None or pid is None:
            return None
        if pid != self._asked_pid or self._address is None:
            try:
                self._address = vm.remote_desktop_address() if vm.spec.remote_desktop else None
            except vmctl.VmctlError as exc:
                log.debug("remote desktop address: %s", exc)
                self._address = None
            self._asked_pid = pid
        return self._address

    def poll(self, vm: vmctl.Machine | None, pid: int | None) -> None:
        """Send what changed, one message at a time (the client takes one per second); ``pid``:
        the VM's host process (a new one may listen elsewhere)."""
        if self._shm.pending(Channel.GRAPHICS_REPLY):
            return
        wanted = {"web_graphics_url": self.web_url()}
        address = self._remote_desktop_address(vm, pid)
        if address is not None:
            # as vboxwrapper reports it: localhost:PORT
            wanted["remote_desktop_addr"] = "localhost:" + address.rsplit(":", 1)[1]
        for tag, value in wanted.items():
            if value is None or self._sent.get(tag) == value:
                continue
            if self._shm.send(Channel.GRAPHICS_REPLY, graphics_message(tag, value)):
                self._sent[tag] = value
                log.info("%s: %s", tag.replace("_", " "), value)
            return
