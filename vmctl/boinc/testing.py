"""A stand-in for the BOINC client's side of one slot, for tests and benchmarks.

:class:`FakeClient` prepares a slot the way the client does before it starts an app
(``init_data.xml`` with the client's elements; the 8192-byte ``boinc_mmap_file`` or a System V
segment keyed by ``ftok(init_data.xml, 1)``) and then writes into the channels what the client
writes: process-control messages queued the way the client queues them (one pending at a time;
a ``<resume/>`` cancels a queued ``<suspend/>`` and vice versa), and heartbeats that are dropped
when the previous one is still unread.

>>> import pathlib, tempfile
>>> client = FakeClient(pathlib.Path(tempfile.mkdtemp()), result_name="wu_1_0")
>>> client.heartbeat()
True
>>> client.shm.receive(Channel.HEARTBEAT)
'<heartbeat/><wss>0.000000e+00</wss><max_wss>2.147484e+10</max_wss>'
>>> client.close()
>>> import shutil; shutil.rmtree(client.slot)
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from vmctl.boinc.initdata import INIT_DATA_FILE
from vmctl.boinc.shm import (
    MMAP_FILE,
    Channel,
    SharedMemory,
    create_mmap_file,
    create_sysv_segment,
    ftok_key,
    open_shared_memory,
    remove_sysv_segment,
)

__all__ = ["FakeClient", "parse_status"]

_CONTROL = Channel.PROCESS_CONTROL_REQUEST


def parse_status(text: str) -> dict[str, float]:
    """The numbers in an app_status message, by tag (``current_cpu_time``, ``other_pid``, ...)."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"<(\w+)>([^<]*)</\1>", text)}


class FakeClient:
    """The client's end of one slot's shared memory (see the module docstring)."""

    def __init__(self, slot: Path, *, use_sysv: bool = False, **init_fields: Any) -> None:
        self.slot = Path(slot)
        self.slot.mkdir(parents=True, exist_ok=True)
        self.use_sysv = use_sysv
        self.init_fields: dict[str, Any] = {
            "result_name": "wu_0_0",
            "wu_name": "wu_0",
            "app_name": "vmctl_test",
            "project_dir": str(self.slot.parent / "project"),
            "boinc_dir": str(self.slot.parent),
            "slot": 0,
            "client_pid": os.getpid(),
            "wu_cpu_time": 0.0,
            "starting_elapsed_time": 0.0,
            "checkpoint_period": 60.0,
            "ncpus": 1.0,
            # as the test peers' cc_config: VMs of tests at regular priority on a shared machine
            "no_priority_change": True,
        }
        self.init_fields.update(init_fields)
        self.queue: list[str] = []
        self.key: int | None = None
        self.write_init_data()
        if use_sysv:
            self.key = ftok_key(self.slot / INIT_DATA_FILE)
            self.write_init_data()
            create_sysv_segment(self.key).close()
        else:
            create_mmap_file(self.slot / MMAP_FILE)
        self.shm: SharedMemory = open_shared_memory(self.slot, self.key if use_sysv else -1)

    # -- init_data.xml -----------------------------------------------------------------------------
    def write_init_data(self, **changes: Any) -> None:
        """(Re)write ``init_data.xml`` with the client's elements, in the client's order."""
        self.init_fields.update(changes)
        f = self.init_fields
        root = ET.Element("app_init_data")
        root.text = "\n"

        def add(tag: str, value: object, parent: ET.Element = root) -> None:
            el = ET.SubElement(parent, tag)
            if isinstance(value, float):
                el.text = f"{value:f}"
            else:
                el.text = str(value)
            el.tail = "\n"

        for tag, value in (("major_version", 7), ("minor_version", 20), ("release", 5), ("app_version", 100)):
            add(tag, value)
        for tag in ("userid", "teamid", "hostid"):
            add(tag, int(f.get(tag, 0)))
        add("app_name", f["app_name"])
        add("project_dir", f["project_dir"])
        add("boinc_dir", f["boinc_dir"])
        add("authenticator", f.get("authenticator", "0123456789abcdef"))
        add("user_name", f.get("user_name", "volunteer"))
        for tag in ("user_total_credit", "host_total_credit"):
            add(tag, float(f.get(tag, 0.0)))
        add("wu_name", f["wu_name"])
        add("result_name", f["result_name"])
        add("shm_key", self.key if self.key is not None else -1)
        add("slot", int(f["slot"]))
        add("client_pid", int(f["client_pid"]))
        add("wu_cpu_time", float(f["wu_cpu_time"]))
        add("starting_elapsed_time", float(f["starting_elapsed_time"]))
        add("using_sandbox", 0)
        add("no_priority_change", int(bool(f.get("no_priority_change", False))))
        add("vm_extensions_disabled", int(bool(f.get("vm_extensions_disabled", False))))
        add("checkpoint_period", float(f["checkpoint_period"]))
        add("fraction_done_start", 0.0)
        add("fraction_done_end", 1.0)
        add("ncpus", float(f["ncpus"]))
        add("rsc_fpops_est", 1e12)
        add("rsc_fpops_bound", 1e15)
        add("rsc_memory_bound", 2e9)
        add("rsc_disk_bound", float(f.get("rsc_disk_bound", 1e9)))
        add("computation_deadline", 0.0)
        if f.get("plan_class"):
            add("plan_class", f["plan_class"])
        host = ET.SubElement(root, "host_info")
        host.text = "\n"
        host.tail = "\n"
        add("p_ncpus", os.cpu_count() or 1, host)
        add("m_nbytes", 25769803776.0, host)
        prefs = ET.SubElement(root, "global_preferences")
        prefs.text = "\n"
        prefs.tail = "\n"
        add("cpu_usage_limit", float(f.get("cpu_usage_limit", 100.0)), prefs)
        add("leave_apps_in_memory", 0, prefs)
        path = self.slot / INIT_DATA_FILE
        data = ET.tostring(root, encoding="unicode") + "\n"
        if path.exists():
            # Rewrite in place, as the client does (fopen "w"): ftok keys on the inode.
            with open(path, "r+", encoding="utf-8") as fh:
                fh.truncate(0)
                fh.write(data)
        else:
            path.write_text(data, encoding="utf-8")

    # -- channels -------------------------------------------------------------------------------------
    def control(self, message: str) -> None:
        """Queue a process-control message (``<suspend/>``, ``<quit/>``, ...) as the client does."""
        opposite = {"<suspend/>": "<resume/>", "<resume/>": "<suspend/>"}.get(message)
        if opposite is not None and opposite in self.queue:
            self.queue.remove(opposite)
            return
        if not self.queue and self.shm.send(_CONTROL, message):
            return
        self.queue.append(message)

    def poll(self) -> None:
        """Deliver the oldest queued control message if the channel is free (the client's 1 Hz poll)."""
        if self.queue and self.shm.send(_CONTROL, self.queue[0]):
            self.queue.pop(0)

    def heartbeat(self, network_suspended: bool = False, wss: float = 0.0, max_wss: float = 21474836480.0) -> bool:
        """Send a heartbeat; dropped (False) while the previous one is unread, as by the client."""
        text = f"<heartbeat/><wss>{wss:e}</wss><max_wss>{max_wss:e}</max_wss>"
        if network_suspended:
            text += "<network_suspended/>"
        return self.shm.send(Channel.HEARTBEAT, text)

    def status(self) -> dict[str, float] | None:
        """Take the app's pending status message, parsed; None if there is none."""
        text = self.shm.receive(Channel.APP_STATUS)
        return None if text is None else parse_status(text)

    def close(self) -> None:
        self.shm.close()
        if self.key is not None:
            remove_sysv_segment(self.key)
            self.key = None
