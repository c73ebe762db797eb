"""The job file: what VM to run for a task and how to tell when its work is done.

The native format is TOML, ``vmctl_job.toml`` in the slot (an app-version file, usually). The
keys (all optional except a disk ``image`` or a ``kernel``)::

    backend = "qemu"                    # a backend profile of the host (see hostconfig)
    image = "vm_image.qcow2"            # the base disk: an open name in the slot; never copied
    kernel = "vmlinuz"                  # direct kernel boot (open names in the slot) ...
    initrd = "initrd.img"
    cmdline = "console=ttyS0 vmctl.share=shared"
    memory_mib = 512
    cpus = 1                            # default: the task's CPU count from init_data.xml
    network = false                     # user-mode NAT; follows the client's network mode
    shared_dir = true                   # <slot>/shared, seen by the guest as 9p tag "shared"
    shared_tag = "shared"
    copy_to_shared = ["input.dat"]      # open names copied into the shared dir at the first start
    job_duration = 3600                 # seconds of running time = 100% (for fraction done)
    fraction_done_file = "progress"     # in the shared dir: last line a number 0..1
    completion_trigger_file = "done"    # in the shared dir: [exit code] [notice] [message]
    temporary_exit_trigger_file = "later"   # [delay s] [notice] [reason]
    heartbeat_file = "alive"            # in the shared dir; the guest touches it ...
    heartbeat_interval = 600            # ... at least this often, or the VM counts as hung
    min_checkpoint_interval = 600       # checkpoints every max(this, client's checkpoint period)
    checkpoints = true                  # false: no periodic snapshots (quit still saves state)
    poweroff_completes = true           # the guest powering itself off ends the task
    max_retries = 10                    # hypervisor troubles in a row before the task fails
    retry_delay = 30                    # first retry delay (s); doubles each time, at most 1 h

    [backend_options]                   # only what chooses nothing on the host (see
    accel = "tcg"                       # hostconfig.JOB_BACKEND_OPTIONS)

    [[port_forward]]
    guest_port = 80
    host_port = 0                       # 0: a free port, chosen at each start

    [[output]]
    from = "result.txt"                 # in the shared dir
    to = "result"                       # the result's output file (its open name in the slot)

Unknown keys are errors, and so is every value that could reach outside the slot: names with
``..`` or a leading ``/``, a ``shared_tag`` that is not a plain name, an ``[[output]] to`` or a
``shared_tag`` naming one of the client's or the adapter's own slot files, a backend option that
chooses a program, a URI, a host or a directory (those come from the host's profile).

BOINC vboxwrapper's ``vbox_job.xml`` is read too (see
:data:`VBOX_KEYS`): every key it cannot honour is reported, never silently ignored.

>>> job = parse_toml('image = "disk.qcow2"\\nmemory_mib = 512\\n[backend_options]\\naccel = "tcg"\\n')
>>> job.backend, job.image, job.memory_mib, job.backend_options
('qemu', 'disk.qcow2', 512, {'accel': 'tcg'})
>>> job = parse_vbox_xml('<vbox_job><memory_size_mb>1024</memory_size_mb><os_name>Linux26_64</os_name>'
...                      '<enable_floppyio/></vbox_job>')
>>> job.image, job.memory_mib
('vm_image.vdi', 1024)
>>> [w.split(':')[0] for w in job.notes]
['os_name', 'enable_floppyio']
"""

from __future__ import annotations

import math
import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vmctl.boinc._xmlsafe import XmlRefused, parse_xml
from vmctl.boinc.errors import BoincError
from vmctl.boinc.hostconfig import JOB_BACKEND_OPTIONS

__all__ = [
    "JOB_FILES",
    "VBOX_KEYS",
    "Job",
    "JobError",
    "Output",
    "PortForwardSpec",
    "find_job_file",
    "load_job",
    "parse_toml",
    "parse_vbox_xml",
]

#: Job file names looked for in the slot, in this order.
JOB_FILES = ("vmctl_job.toml", "vbox_job.xml")
DEFAULT_SHARED_TAG = "shared"
#: vboxwrapper's default disk image name.
VBOX_DEFAULT_IMAGE = "vm_image.vdi"
#: Slot files of the client and the adapter: no output may overwrite one, no share be one.
RESERVED_SLOT_NAMES = frozenset(
    {
        "init_data.xml",
        "boinc_mmap_file",
        "boinc_finish_called",
        "boinc_temporary_exit",
        "boinc_task_state.xml",
        "stderr.txt",
        "vmctl_state.json",
        "vm_console.log",
        "vm",
        *JOB_FILES,
    }
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_MAX_JOB_SIZE = 1 << 20


class JobError(BoincError):
    """The job file is missing, malformed or asks for something impossible."""


@dataclass(frozen=True)
class Output:
    """Copy ``source`` (relative to the shared dir) to the slot file ``target`` at completion."""

    source: str
    target: str
    optional: bool = False


@dataclass(frozen=True)
class PortForwardSpec:
    guest_port: int
    host_port: int = 0
    """0: pick a free loopback port at every start."""


@dataclass(frozen=True)
class Job:
    """A parsed job file. ``notes`` are the messages about keys read but not (fully) honoured."""

    source: str = ""
    backend: str = "qemu"
    backend_options: dict[str, Any] = field(default_factory=dict)
    image: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    memory_mib: int = 256
    cpus: int | None = None
    network: bool = False
    port_forwards: tuple[PortForwardSpec, ...] = ()
    shared_dir: bool = False
    shared_tag: str = DEFAULT_SHARED_TAG
    share_slot_dir: bool = False
    share_project_dir: bool = False
    scratch_dir: bool = False
    copy_to_shared: tuple[str, ...] = ()
    copy_cmdline_to_shared: bool = False
    job_duration: float = 0.0
    fraction_done_file: str | None = None
    completion_trigger_file: str | None = None
    temporary_exit_trigger_file: str | None = None
    heartbeat_file: str | None = None
    heartbeat_interval: float = 600.0
    min_checkpoint_interval: float = 600.0
    checkpoints: bool = True
    poweroff_completes: bool = True
    max_retries: int = 10
    retry_delay: float = 30.0
    outputs: tuple[Output, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def has_shared_dir(self) -> bool:
        return self.shared_dir or self.share_slot_dir

    def with_overrides(self, *, cpus: int | None = None, memory_mib: int | None = None) -> Job:
        """The job with command-line overrides (vboxwrapper's ``--nthreads``, ``--memory_size_mb``)."""
        changes: dict[str, Any] = {}
        if cpus is not None:
            changes["cpus"] = _positive_int("--nthreads", cpus)
        if memory_mib is not None:
            changes["memory_mib"] = _positive_int("--memory_size_mb", memory_mib)
        return replace(self, **changes) if changes else self

    def check(self) -> Job:
        """Cross-key checks; returns self."""
        if self.image is None and self.kernel is None:
            raise JobError(f"{self.source}: the job needs a disk 'image' or a 'kernel' to boot")
        if self.initrd is not None and self.kernel is None:
            raise JobError(f"{self.source}: 'initrd' needs a 'kernel'")
        if self.cmdline is not None and self.kernel is None:
            raise JobError(f"{self.source}: 'cmdline' needs a 'kernel'")
        needs_share = [
            name
            for name, value in (
                ("copy_to_shared", self.copy_to_shared),
                ("fraction_done_file", self.fraction_done_file),
                ("completion_trigger_file", self.completion_trigger_file),
                ("temporary_exit_trigger_file", self.temporary_exit_trigger_file),
                ("heartbeat_file", self.heartbeat_file),
                ("output", self.outputs),
                ("copy_cmdline_to_shared", self.copy_cmdline_to_shared),
            )
            if value
        ]
        if needs_share and not self.has_shared_dir:
            raise JobError(f"{self.source}: {', '.join(needs_share)} need a shared directory (shared_dir = true)")
        if self.shared_dir and self.share_slot_dir:
            raise JobError(f"{self.source}: use either a shared directory or sharing the slot directory, not both")
        for name in (
            self.fraction_done_file,
            self.completion_trigger_file,
            self.temporary_exit_trigger_file,
            self.heartbeat_file,
            *(o.source for o in self.outputs),
        ):
            if name is not None:
                _relative_name(f"{self.source}: shared-directory file", name)
        for what, name in (("image", self.image), ("kernel", self.kernel), ("initrd", self.initrd)):
            if name is not None:
                _relative_name(f"{self.source}: '{what}'", name)
        for name in self.copy_to_shared:
            _relative_name(f"{self.source}: copy_to_shared", name)
        for out in self.outputs:
            _relative_name(f"{self.source}: output 'to'", out.target)
            if Path(out.target).parts[0] in RESERVED_SLOT_NAMES:
                raise JobError(f"{self.source}: output 'to' {out.target!r} would overwrite a file of the client")
        if not _PLAIN_NAME.fullmatch(self.backend):
            raise JobError(f"{self.source}: 'backend' {self.backend!r} is not a profile name")
        if not _PLAIN_NAME.fullmatch(self.shared_tag) or self.shared_tag in RESERVED_SLOT_NAMES:
            raise JobError(
                f"{self.source}: 'shared_tag' {self.shared_tag!r} must be a plain name (letters, digits, '_', '.', "
                "'-'; at most 64) and none of the slot's own files"
            )
        self._check_backend_options()
        return self

    def _check_backend_options(self) -> None:
        for key, value in self.backend_options.items():
            allowed = JOB_BACKEND_OPTIONS.get(key)
            if allowed is None:
                raise JobError(
                    f"{self.source}: the backend option '{key}' may not be set by a job file (the host's backend "
                    f"profile sets it); a job may set: {', '.join(sorted(JOB_BACKEND_OPTIONS))}"
                )
            if value not in allowed:
                raise JobError(f"{self.source}: the backend option '{key}' must be one of {', '.join(allowed)}")


# -- TOML ------------------------------------------------------------------------------------------

_STR_KEYS = (
    "backend",
    "image",
    "kernel",
    "initrd",
    "cmdline",
    "shared_tag",
    "fraction_done_file",
    "completion_trigger_file",
    "temporary_exit_trigger_file",
    "heartbeat_file",
)
_BOOL_KEYS = ("network", "shared_dir", "checkpoints", "poweroff_completes", "copy_cmdline_to_shared")
_NUM_KEYS = ("job_duration", "heartbeat_interval", "min_checkpoint_interval", "retry_delay")
_TOML_KEYS = frozenset(
    (
        *_STR_KEYS,
        *_BOOL_KEYS,
        *_NUM_KEYS,
        "memory_mib",
        "cpus",
        "max_retries",
        "copy_to_shared",
        "backend_options",
        "port_forward",
        "output",
    )
)


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JobError(f"'{key}' must be a positive integer, not {value!r}")
    return value


def _relative_name(what: str, name: str) -> str:
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise JobError(f"{what} {name!r} must be a relative name without '..'")
    return name


def _port(key: str, value: object, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise JobError(f"'{key}' must be a port number, not {value!r}")
    return value


def parse_toml(text: str, source: str = "vmctl_job.toml") -> Job:
    """Parse a ``vmctl_job.toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise JobError(f"{source} is nested too deeply") from None
    unknown = sorted(set(data) - _TOML_KEYS)
    if unknown:
        raise JobError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(_TOML_KEYS))}"
        )
    values: dict[str, Any] = {"source": source}
    for key in _STR_KEYS:
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise JobError(f"{source}: '{key}' must be a non-empty string, not {data[key]!r}")
            values[key] = data[key]
    for key in _BOOL_KEYS:
        if key in data:
            if not isinstance(data[key], bool):
                raise JobError(f"{source}: '{key}' must be true or false, not {data[key]!r}")
            values[key] = data[key]
    for key in _NUM_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise JobError(f"{source}: '{key}' must be a number of seconds >= 0, not {value!r}")
            values[key] = float(value)
    try:
        if "memory_mib" in data:
            values["memory_mib"] = _positive_int("memory_mib", data["memory_mib"])
        if "cpus" in data:
            values["cpus"] = _positive_int("cpus", data["cpus"])
        if "max_retries" in data:
            values["max_retries"] = _positive_int("max_retries", data["max_retries"])
    except JobError as exc:
        raise JobError(f"{source}: {exc}") from None
    for key in ("image", "kernel", "initrd"):
        if key in values:
            _relative_name(f"{source}: '{key}'", values[key])
    if "copy_to_shared" in data:
        files = data["copy_to_shared"]
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise JobError(f"{source}: 'copy_to_shared' must be a list of file names")
        values["copy_to_shared"] = tuple(_relative_name(f"{source}: copy_to_shared", f) for f in files)
    if "backend_options" in data:
        opts = data["backend_options"]
        if not isinstance(opts, dict):
            raise JobError(f"{source}: [backend_options] must be a table")
        values["backend_options"] = dict(opts)
    if "port_forward" in data:
        values["port_forwards"] = tuple(
            _toml_port_forward(source, pf) for pf in _table_list(source, data, "port_forward")
        )
    if "output" in data:
        values["outputs"] = tuple(_toml_output(source, o) for o in _table_list(source, data, "output"))
    return Job(**values).check()


def _table_list(source: str, data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data[key]
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise JobError(f"{source}: '{key}' must be an array of tables ([[{key}]])")
    return items


def _toml_port_forward(source: str, pf: Mapping[str, Any]) -> PortForwardSpec:
    unknown = set(pf) - {"guest_port", "host_port"}
    if unknown or "guest_port" not in pf:
        raise JobError(f"{source}: [[port_forward]] takes guest_port (required) and host_port, got {sorted(pf)}")
    return PortForwardSpec(
        guest_port=_port("guest_port", pf["guest_port"], False),
        host_port=_port("host_port", pf.get("host_port", 0), True),
    )


def _toml_output(source: str, out: Mapping[str, Any]) -> Output:
    unknown = set(out) - {"from", "to", "optional"}
    if unknown or "from" not in out or "to" not in out:
        raise JobError(f"{source}: [[output]] takes from, to (required) and optional, got {sorted(out)}")
    if not isinstance(out["from"], str) or not isinstance(out["to"], str):
        raise JobError(f"{source}: [[output]] from and to must be strings")
    optional = out.get("optional", False)
    if not isinstance(optional, bool):
        raise JobError(f"{source}: [[output]] optional must be true or false")
    return Output(
        source=_relative_name(f"{source}: output 'from'", out["from"]),
        target=_relative_name(f"{source}: output 'to'", out["to"]),
        optional=optional,
    )


# -- vbox_job.xml ------------------------------------------------------------------------------------

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
                values["image"] = _relative_name(f"{source}: <multiattach_vdi_file>", _xml_str(el))
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
                copy.append(_relative_name(f"{source}: <copy_to_shared>", _xml_str(el)))
        elif tag == "copy_cmdline_to_shared":
            values["copy_cmdline_to_shared"] = _xml_bool(el)
        elif tag == "pf_guest_port":
            pf_guest = _port("pf_guest_port", int(_xml_num(el)), True)
        elif tag == "pf_host_port":
            pf_host = _port("pf_host_port", int(_xml_num(el)), True)
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
            guest_port=_port("guest_port", fields["guest_port"] + i, False),
            host_port=_port("host_port", host + i if host else 0, True),
        )
        for i in range(count)
    ]


# -- finding and loading ---------------------------------------------------------------------------


def find_job_file(slot: Path, project_dir: str | Path | None = None) -> Path:
    """The job file for ``slot``: ``vmctl_job.toml`` or else ``vbox_job.xml`` (links resolved,
    inside the project directory or the slot)."""
    from vmctl.boinc.slot import Slot, SlotError

    s = Slot(slot, project_dir=project_dir)
    for name in JOB_FILES:
        if (s.path / name).exists() or (s.path / name).is_symlink():
            try:
                return s.resolve(name)
            except SlotError as exc:
                raise JobError(str(exc)) from None
    raise JobError(f"no job file in the slot {s.path}: ship {' or '.join(JOB_FILES)} with the app version")


def load_job(path: Path) -> Job:
    """Read and parse a job file: vboxwrapper XML if it starts with ``<``, else TOML."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_JOB_SIZE + 1)
        if len(data) > _MAX_JOB_SIZE:
            raise JobError(f"the job file {path} is over {_MAX_JOB_SIZE} bytes")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise JobError(f"the job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot read the job file {path}: {exc}") from exc
    if text.lstrip().startswith("<"):
        return parse_vbox_xml(text, path.name)
    return parse_toml(text, path.name)
