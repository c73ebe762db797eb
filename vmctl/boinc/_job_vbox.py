"""BOINC vboxwrapper's ``vbox_job.xml``, read key by key: :data:`VBOX_KEYS` says what vmctl-boinc
does with each key vboxwrapper reads, and every key it cannot honour becomes a note on the job."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from vmctl.boinc._job_model import VBOX_DEFAULT_IMAGE, Job, JobError, PortForwardSpec, port_number, relative_name
from vmctl.boinc._xmlsafe import XmlRefused, parse_xml

__all__ = ["VBOX_KEYS", "VBOX_OPTIONS", "parse_vbox_xml", "vbox_image_name"]

#: Every key vboxwrapper (BOINC's HEAD, samples/vboxwrapper/vboxjob.cpp) reads, and what
#: vmctl-boinc does with it. The first word is the treatment: ``honoured`` (every backend),
#: ``partial`` (the backends that can; the others fail at the start with 206, naming the key and
#: the backend), ``refused`` (the task fails at its start with 206: the guest would wait for
#: something no backend gives it yet) or ``ignored`` (it cannot change what the guest sees or the
#: project gets; said once in stderr.txt).
VBOX_KEYS: Mapping[str, str] = {
    "memory_size_mb": "honoured: memory_mib; at least 512 MB (also without the key), as vboxwrapper sets it",
    "job_duration": "honoured: the task ends successfully once it has run this long (VM powered off and deleted, "
    "exit 0), as in vboxwrapper; also the fraction done",
    "minimum_checkpoint_interval": "honoured: min_checkpoint_interval",
    "fraction_done_filename": "partial: fraction_done_file, in the shared directory (backends with shared folders)",
    "completion_trigger_file": "partial: in the shared directory (backends with shared folders)",
    "temporary_exit_trigger_file": "partial: in the shared directory (backends with shared folders)",
    "heartbeat_filename": "partial: heartbeat_file in the shared directory, looked at as vboxwrapper does (every "
    "minimum_heartbeat_interval / 3 s of running time; it must exist, then change; three looks in a row without: "
    "a hung VM, retried from the last checkpoint where vboxwrapper fails the task)",
    "minimum_heartbeat_interval": "honoured: heartbeat_interval",
    "multiattach_vdi_file": "honoured: the base image is this file in the project directory (never copied), "
    "as vboxwrapper resolves it; the backend must read its format",
    "enable_network": "honoured: network",
    "enable_shared_directory": "partial: shared_dir (9p tag 'shared'; shared folders elsewhere)",
    "share_slot_dir": "partial: the slot's 'shared' subdirectory is shared as tag 'shared', never the slot itself "
    "(vboxwrapper shares the slot: its links and the client's files would be the guest's to write)",
    "share_project_dir": "partial: the project directory is shared read-only as tag 'project'",
    "enable_scratch_directory": "partial: <project>/scratch is shared as tag 'scratch'",
    "copy_to_shared": "partial: copied into the shared directory at the first start",
    "copy_cmdline_to_shared": "partial: the command line is written to shared/cmdline",
    "pf_guest_port": "honoured: a loopback port forward, sent to the client as the task's web graphics URL "
    "(http://localhost:PORT; not when the app version has a graphics_app), as vboxwrapper does",
    "pf_host_port": "honoured as vboxwrapper does: the number is not bound; a free port is picked when the VM is "
    "made, kept for the task and logged",
    "port_forward": "honoured: guest_port/nports; each host port is picked free (never the literal number); "
    "is_remote is not (forwards are loopback only)",
    "enable_vm_savestate_usage": "honoured: vmctl-boinc always saves the VM's state on quit",
    "disable_automatic_checkpoints": "honoured as vboxwrapper does: no checkpoint snapshots; at each of the client's "
    "checkpoint periods a checkpoint is reported without one (the guest keeps its own progress)",
    "os_name": "honoured: a 64-bit type (..._64) requires hardware acceleration, as in vboxwrapper; "
    "vmctl picks the virtual hardware",
    "enable_floppyio": "partial: a floppy image vm_floppy_<slot>.img in the slot holding init_data.xml in "
    "floppyio.cpp's layout, written when the VM is made (QEMU, libvirt)",
    "enable_cern_dataformat": "partial: the floppy holds vboxwrapper's BOINC_USERNAME=... lines instead of "
    "init_data.xml (with enable_floppyio); at job_duration, 'output' says 'Work Unit completed!'",
    "enable_cache_disk": "partial: with enable_isocontextualization (alone, vboxwrapper ignores it too), the slot's "
    "vm_cache.vdi as a second disk written in place, kept across restarts (the slot's own copy where the slot "
    "only links to it) (QEMU, libvirt)",
    "enable_isocontextualization": "partial: the slot's vm_isocontext.iso as a read-only CD-ROM, the VM's boot "
    "medium instead of the disk image, as vboxwrapper attaches it (QEMU, libvirt)",
    "boot_iso": "partial: the VM boots its CD-ROM before its disks (QEMU, libvirt); without "
    "enable_isocontextualization there is no CD-ROM, as in vboxwrapper",
    "network_bridged_mode": "refused: only NAT networking is available",
    "trickle_trigger_file": "partial: each file of this name in the shared directory is sent as a trickle-up "
    "(variety: its name) and deleted, as vboxwrapper does; may repeat",
    "intermediate_upload_file": "partial: when the guest writes this result output to the shared directory it is "
    "copied to the output and uploaded before the task ends (boinc_upload_file); may repeat",
    "vm_disk_controller_type": "ignored: vmctl picks the disk controller (virtio)",
    "vm_disk_controller_model": "ignored: vmctl picks the disk controller (virtio)",
    "vram_size_mb": "ignored: the VM is headless",
    "vm_network_driver": "ignored: vmctl picks the network card (virtio)",
    "enable_nat_dns_host_resolver": "ignored: NAT DNS is the backend's default",
    "enable_remotedesktop": "partial: QEMU serves the VM's screen by VNC on 127.0.0.1 at a port free at each start, "
    "VirtualBox by VRDE (RDP) on 127.0.0.1 at the first free port of 3389-3488 (the VBoxManage transport, with the "
    "extension pack), sent to the client as remote_desktop_addr (localhost:PORT, as vboxwrapper); other backends, "
    "and VirtualBox without the extension pack, run without, said once (as vboxwrapper does)",
    "enable_screenshots_on_error": "honoured: on every error (set or not) the VM's screen is saved in the slot "
    "as vm_screenshot.png; the guest console's and the hypervisor's log tails go to stderr.txt",
    "enable_graphics_support": "ignored: the VM is headless",
}

#: vboxwrapper's command-line options (vboxwrapper.cpp, main) and what vmctl-boinc does with them.
VBOX_OPTIONS: Mapping[str, str] = {
    "--nthreads": "honoured: the VM's CPUs (overrides the job file)",
    "--memory_size_mb": "honoured: the VM's memory (overrides the job file)",
    "--vmimage": "honoured: without multiattach_vdi_file the image is vm_image_N.vdi",
    "--trickle": "honoured: every X s of elapsed time a trickle-up of variety cpu_time, as vboxwrapper sends it",
    "--register_only": "refused: vmctl-boinc registers no VM without running it",
    "--sporadic": "refused: sporadic apps are not supported yet",
}

#: vboxwrapper.h's MIN_MEMORY_SIZE_MB: no VM of a vbox_job.xml gets less.
VBOX_MIN_MEMORY_MB = 512

#: Keys honoured on some backends only, for another reason than shared folders.
_PARTIAL_WITHOUT_SHARES = frozenset({"enable_remotedesktop"})

_BOOL_REFUSED = ("network_bridged_mode",)
#: vboxwrapper.h's names of the slot's ISO and cache disk
_ISO_IMAGE_FILENAME = "vm_isocontext.iso"
_CACHE_DISK_FILENAME = "vm_cache.vdi"


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
    refused: list[str] = []
    forwards: list[PortForwardSpec] = []
    copy: list[str] = []
    trickles: list[str] = []
    uploads: list[str] = []
    pf_guest = 0
    media: dict[str, bool] = {}
    for el in root:
        tag = el.tag
        meaning = VBOX_KEYS.get(tag)
        if meaning is None:
            notes.append(f"{tag}: unknown vbox_job.xml key, ignored")
            continue
        if meaning.startswith("refused"):
            if tag not in _BOOL_REFUSED or _xml_bool(el):
                refused.append(f"{tag}: {meaning.removeprefix('refused: ')}")
            continue
        if meaning.startswith("ignored"):
            notes.append(f"{tag}: {meaning}")
            continue
        if tag == "memory_size_mb":
            values["memory_mib"] = int(_xml_num(el))
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
                values["image"] = _plain_file_name(source, tag, _xml_str(el))
                values["image_in_project"] = True
        elif tag == "os_name":
            # vboxwrapper (vbox_vboxmanage.cpp): "VM type requires acceleration" for 64-bit types
            values["needs_acceleration"] = "_64" in _xml_str(el)
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
            # Checked, never bound: vboxwrapper replaces it with its checkpoint's port (0 at the first
            # start), so the port is always picked free (boinc_get_port) and kept for the task.
            port_number("pf_host_port", int(_xml_num(el)), True)
        elif tag == "port_forward":
            forwards.extend(_vbox_port_forward(source, el, notes))
        elif tag == "enable_vm_savestate_usage":
            pass  # always the behaviour
        elif tag == "disable_automatic_checkpoints":
            values["checkpoints"] = not _xml_bool(el)
            values["checkpoint_reports"] = _xml_bool(el)
        elif tag == "enable_remotedesktop":
            values["remote_desktop"] = _xml_bool(el)
        elif tag == "trickle_trigger_file":
            if _xml_str(el):
                trickles.append(relative_name(f"{source}: <{tag}>", _xml_str(el)))
        elif tag == "intermediate_upload_file":
            if _xml_str(el):
                uploads.append(_plain_file_name(source, tag, _xml_str(el)))
        elif tag in _MEDIA_FLAGS:
            media[tag] = _xml_bool(el)
    _media(values, media, notes)
    memory = values.get("memory_mib", 0)
    if memory < VBOX_MIN_MEMORY_MB:
        if memory:  # vboxwrapper.cpp: "Memory size %dMB is too small; setting to %dMB"
            notes.append(f"memory_size_mb: {memory} MB is too small; {VBOX_MIN_MEMORY_MB} MB, as vboxwrapper sets it")
        values["memory_mib"] = VBOX_MIN_MEMORY_MB
    if pf_guest:
        forwards.append(PortForwardSpec(guest_port=pf_guest))
        # vboxwrapper: the pf_guest_port forward is the task's web graphics (http://localhost:<host port>)
        values["web_graphics_guest_port"] = pf_guest
    if trickles:
        values["trickle_trigger_files"] = tuple(trickles)
    if uploads:
        values["intermediate_upload_files"] = tuple(uploads)
    if forwards:
        values["port_forwards"] = tuple(forwards)
        values["network"] = True
    if copy:
        values["copy_to_shared"] = tuple(copy)
    values["notes"] = tuple(notes)
    values["refused"] = tuple(refused)
    if any(values.get(k) for k in ("shared_dir", "share_slot_dir", "share_project_dir", "scratch_dir")):
        values["share_keys"] = tuple(
            dict.fromkeys(
                el.tag
                for el in root
                if VBOX_KEYS.get(el.tag, "").startswith("partial") and el.tag not in _PARTIAL_WITHOUT_SHARES
            )
        )
    return Job(**values).check()


_MEDIA_FLAGS = (
    "enable_isocontextualization",
    "enable_cache_disk",
    "boot_iso",
    "enable_floppyio",
    "enable_cern_dataformat",
)


def _media(values: dict[str, Any], media: dict[str, bool], notes: list[str]) -> None:
    """vbox_vboxmanage.cpp's ``create_vm``: with the ISO the VM gets no disk image, the ISO on
    port 0 and the cache disk (only then) on port 1; ``boot_iso`` puts the DVD first."""
    if media.get("enable_isocontextualization"):
        values["cdrom"] = _ISO_IMAGE_FILENAME
        if values.get("image_in_project"):
            notes.append("multiattach_vdi_file: not attached with enable_isocontextualization, as in vboxwrapper")
        values["image"] = None
        values["image_in_project"] = False
        if media.get("enable_cache_disk"):
            values["cache_disk"] = _CACHE_DISK_FILENAME
        values["boot_cdrom"] = media.get("boot_iso", False)
    else:
        for key in ("enable_cache_disk", "boot_iso"):
            if media.get(key):
                notes.append(f"{key}: ignored without enable_isocontextualization, as in vboxwrapper")
    values["floppy"] = media.get("enable_floppyio", False)
    values["cern_dataformat"] = values["floppy"] and media.get("enable_cern_dataformat", False)
    if media.get("enable_cern_dataformat") and not values["floppy"]:
        notes.append("enable_cern_dataformat: ignored without enable_floppyio (no floppy)")


def _plain_file_name(source: str, tag: str, name: str) -> str:
    """A file name without a directory part: vboxwrapper joins it to the project directory."""
    relative_name(f"{source}: <{tag}>", name)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise JobError(f"{source}: <{tag}> {name!r} must be a file name in the project directory, not a path")
    return name


def vbox_image_name(number: int) -> str:
    """vboxwrapper's image for ``--vmimage N``: ``vm_image_N.vdi``."""
    return f"vm_image_{number}.vdi"


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
    port_number("host_port", fields.get("host_port", 0), True)
    # Never the literal host port: two tasks of one app on one host would collide on it.
    guest = fields["guest_port"]
    return [PortForwardSpec(guest_port=port_number("guest_port", guest + i, False)) for i in range(count)]


# -- finding and loading ---------------------------------------------------------------------------
