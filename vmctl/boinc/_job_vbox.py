"""BOINC vboxwrapper's ``vbox_job.xml``, read key by key: :data:`VBOX_KEYS` says what vmctl-boinc
does with each key vboxwrapper reads, and every key it cannot honour becomes a note on the job."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from vmctl.boinc._job_model import VBOX_DEFAULT_IMAGE, Job, JobError, PortForwardSpec, port_number, relative_name
from vmctl.boinc._xmlsafe import XmlRefused, parse_xml

__all__ = ["VBOX_KEYS", "parse_vbox_xml"]

#: Every key vboxwrapper (release 26212) reads, and what vmctl-boinc does with it.
VBOX_KEYS: Mapping[str, str] = {
    "memory_size_mb": "honoured: memory_mib",
    "job_duration": "honoured",
    "minimum_checkpoint_interval": "honoured: min_checkpoint_interval",
    "fraction_done_filename": "honoured: fraction_done_file",
    "completion_trigger_file": "honoured",
    "temporary_exit_trigger_file": "honoured",
    "heartbeat_filename": "honoured: heartbeat_file (a stale heartbeat is treated as a hung VM)",
    "minimum_heartbeat_interval": "honoured: heartbeat_interval",
    "multiattach_vdi_file": "honoured: image (default vm_image.vdi); the backend must read its format",
    "enable_network": "honoured: network",
    "enable_shared_directory": "honoured: shared_dir (9p tag 'shared')",
    "share_slot_dir": "honoured as `shared_dir`: the slot's 'shared' subdirectory is shared as tag 'shared'",
    "share_project_dir": "honoured: the project directory is shared read-only as tag 'project'",
    "enable_scratch_directory": "honoured: <project>/scratch is shared as tag 'scratch'",
    "copy_to_shared": "honoured",
    "copy_cmdline_to_shared": "honoured: the command line is written to shared/cmdline",
    "pf_guest_port": "honoured: a loopback port forward",
    "pf_host_port": "honoured (0: a free port)",
    "port_forward": "honoured: host_port/guest_port/nports; is_remote is not (forwards are loopback only)",
    "enable_vm_savestate_usage": "honoured: vmctl-boinc always saves the VM's state on quit",
    "disable_automatic_checkpoints": "honoured: checkpoints = false",
    "os_name": "ignored: not needed (vmctl picks the virtual hardware)",
    "vm_disk_controller_type": "not honoured: vmctl picks the disk controller (virtio)",
    "vm_disk_controller_model": "not honoured: vmctl picks the disk controller (virtio)",
    "vm_graphics_controller_type": "not honoured: the VM has no graphics",
    "vram_size_mb": "not honoured: the VM has no graphics",
    "vm_network_driver": "not honoured: vmctl picks the network card (virtio)",
    "network_bridged_mode": "not honoured: only NAT networking is available",
    "enable_nat_dns_host_resolver": "not honoured: NAT DNS is the backend's default",
    "enable_floppyio": "not honoured: there is no floppy channel; use the shared directory",
    "enable_cache_disk": "not honoured: no second disk; use the shared directory",
    "enable_isocontextualization": "not honoured: no ISO contextualisation; use the shared directory",
    "boot_iso": "not honoured: the VM boots its disk image or a kernel",
    "enable_remotedesktop": "not honoured: no remote desktop",
    "enable_screenshots_on_error": "not honoured: no screen; the guest console log is written to stderr instead",
    "enable_graphics_support": "not honoured: no graphics",
    "enable_cern_dataformat": "not honoured: CERN's floppy data format is not supported",
    "trickle_trigger_file": "not honoured: trickle messages are not supported",
    "intermediate_upload_file": "not honoured: intermediate uploads are not supported",
}


def _xml_bool(el: ET.Element) -> bool:
    text = (el.text or "").strip().lower()
    if text in ("", "true", "yes"):
        return True
    if text in ("false", "no"):
        return False
    try:
        return int(float(text)) != 0
    except (ValueError, OverflowError):  # OverflowError: inf
        raise JobError(f"vbox_job.xml: <{el.tag}> must be empty or a number, not {text!r}") from None


def _xml_num(el: ET.Element) -> float:
    text = (el.text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise JobError(f"vbox_job.xml: <{el.tag}> must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise JobError(f"vbox_job.xml: <{el.tag}> must be a number >= 0, not {text!r}")
    return value


def _xml_str(el: ET.Element) -> str:
    return (el.text or "").strip()


def parse_vbox_xml(text: str, source: str = "vbox_job.xml") -> Job:
    """Parse a vboxwrapper ``vbox_job.xml``; unhonoured keys end up in ``Job.notes``."""
    try:
        root = parse_xml(text)
    except XmlRefused as exc:
        raise JobError(f"{source}: {exc}") from None
    if root.tag != "vbox_job":
        raise JobError(f"{source}: the root element is <{root.tag}>, not <vbox_job>")
    values: dict[str, Any] = {"source": source, "image": VBOX_DEFAULT_IMAGE, "poweroff_completes": True}
    notes: list[str] = []
    forwards: list[PortForwardSpec] = []
    copy: list[str] = []
    pf_guest = pf_host = 0
    for el in root:
        tag = el.tag
        meaning = VBOX_KEYS.get(tag)
        if meaning is None:
            notes.append(f"{tag}: unknown vbox_job.xml key, ignored")
            continue
        if not meaning.startswith("honoured"):
            notes.append(f"{tag}: {meaning}")
            continue
        if tag == "memory_size_mb":
            values["memory_mib"] = max(1, int(_xml_num(el)))
        elif tag == "job_duration":
            values["job_duration"] = _xml_num(el)
        elif tag == "minimum_checkpoint_interval":
            values["min_checkpoint_interval"] = _xml_num(el)
        elif tag == "fraction_done_filename":
            values["fraction_done_file"] = _xml_str(el) or None
        elif tag == "completion_trigger_file":
            values["completion_trigger_file"] = _xml_str(el) or None
        elif tag == "temporary_exit_trigger_file":
            values["temporary_exit_trigger_file"] = _xml_str(el) or None
        elif tag == "heartbeat_filename":
            values["heartbeat_file"] = _xml_str(el) or None
        elif tag == "minimum_heartbeat_interval":
            values["heartbeat_interval"] = _xml_num(el)
        elif tag == "multiattach_vdi_file":
            if _xml_str(el):
                values["image"] = relative_name(f"{source}: <multiattach_vdi_file>", _xml_str(el))
        elif tag == "enable_network":
            values["network"] = _xml_bool(el)
        elif tag == "enable_shared_directory":
            values["shared_dir"] = _xml_bool(el)
        elif tag == "share_slot_dir":
            values["share_slot_dir"] = _xml_bool(el)
        elif tag == "share_project_dir":
            values["share_project_dir"] = _xml_bool(el)
        elif tag == "enable_scratch_directory":
            values["scratch_dir"] = _xml_bool(el)
        elif tag == "copy_to_shared":
            if _xml_str(el):
                copy.append(relative_name(f"{source}: <copy_to_shared>", _xml_str(el)))
        elif tag == "copy_cmdline_to_shared":
            values["copy_cmdline_to_shared"] = _xml_bool(el)
        elif tag == "pf_guest_port":
            pf_guest = port_number("pf_guest_port", int(_xml_num(el)), True)
        elif tag == "pf_host_port":
            pf_host = port_number("pf_host_port", int(_xml_num(el)), True)
        elif tag == "port_forward":
            forwards.extend(_vbox_port_forward(source, el, notes))
        elif tag == "enable_vm_savestate_usage":
            pass  # always the behaviour
        elif tag == "disable_automatic_checkpoints":
            values["checkpoints"] = not _xml_bool(el)
    if pf_guest:
        forwards.append(PortForwardSpec(guest_port=pf_guest, host_port=pf_host))
    elif pf_host:
        notes.append("pf_host_port: ignored without pf_guest_port")
    if forwards:
        values["port_forwards"] = tuple(forwards)
        values["network"] = True
    if copy:
        values["copy_to_shared"] = tuple(copy)
    values["notes"] = tuple(notes)
    return Job(**values).check()


def _vbox_port_forward(source: str, el: ET.Element, notes: list[str]) -> list[PortForwardSpec]:
    fields: dict[str, int] = {}
    for child in el:
        if child.tag in ("host_port", "guest_port", "nports"):
            fields[child.tag] = int(_xml_num(child))
        elif child.tag == "is_remote":
            if _xml_bool(child):
                notes.append("port_forward/is_remote: not honoured: forwarded ports listen on 127.0.0.1 only")
        else:
            notes.append(f"port_forward/{child.tag}: unknown key, ignored")
    if not fields.get("guest_port"):
        raise JobError(f"{source}: <port_forward> needs a <guest_port>")
    count = max(1, fields.get("nports", 0))
    host = fields.get("host_port", 0)
    return [
        PortForwardSpec(
            guest_port=port_number("guest_port", fields["guest_port"] + i, False),
            host_port=port_number("host_port", host + i if host else 0, True),
        )
        for i in range(count)
    ]


# -- finding and loading ---------------------------------------------------------------------------
