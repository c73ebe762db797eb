"""The job file: what VM to run for a task and how to tell when its work is done.

The native format is TOML, ``vmctl_job.toml`` in the slot (an app-version file, usually). The
keys (all optional except a disk ``image``, a ``kernel`` or a ``cdrom``)::

    backend = "qemu"                    # a backend profile of the host (see hostconfig)
    image = "vm_image.qcow2"            # the base disk: an open name in the slot; never copied
    kernel = "vmlinuz"                  # direct kernel boot (open names in the slot) ...
    initrd = "initrd.img"
    cmdline = "console=ttyS0 vmctl.share=shared"
    cdrom = "context.iso"               # an ISO the guest sees as a read-only CD-ROM (an open name)
    boot_cdrom = false                  # true: the VM boots the CD-ROM before its disks
    cache_disk = "cache.vdi"            # a second disk in the slot, written in place (kept across
                                        # restarts; the slot's own copy if the slot links to it)
    floppy = false                      # true: a floppy vm_floppy_<slot>.img holding init_data.xml
    memory_mib = 512
    cpus = 1                            # default: the task's CPU count from init_data.xml
    network = false                     # user-mode NAT; follows the client's network mode
    shared_dir = true                   # <slot>/shared, seen by the guest as 9p tag "shared"
    shared_tag = "shared"
    copy_to_shared = ["input.dat"]      # open names copied into the shared dir at the first start
    trickle_trigger_files = ["trickle"] # in the shared dir: each file found is sent as a trickle-up
    intermediate_upload_files = ["part1"]   # result outputs the guest writes to the shared dir
                                        # early: copied to the output and uploaded at once
    web_graphics_guest_port = 80        # the forward to this guest port is the web graphics URL
    remote_desktop = false              # the VM's screen on loopback VNC/VRDE (the Manager's button)
    apply_cpu_usage_limit = true        # cap the VM at cpu_usage_limit (vbox* plan classes;
                                        # default: when init_data.xml names one)
    job_duration = 3600                 # seconds of running time = 100% (for fraction done)
    fraction_done_file = "progress"     # in the shared dir: last line a number 0..1
    completion_trigger_file = "done"    # in the shared dir: [exit code] [notice] [message]
    temporary_exit_trigger_file = "later"   # [delay s] [notice] [reason]
    heartbeat_file = "alive"            # in the shared dir; the guest touches it ...
    heartbeat_interval = 600            # ... at least this often, or the VM counts as hung
    min_checkpoint_interval = 600       # checkpoints every max(this, client's checkpoint period)
    checkpoints = true                  # false: no periodic snapshots (quit still saves state)
    poweroff_completes = true           # the guest powering itself off ends the task
    require_acceleration = false        # true: no hardware virtualization, no run (the client is told)
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

BOINC vboxwrapper's ``vbox_job.xml`` is read too (see :data:`VBOX_KEYS`): every key it cannot
honour is reported, never silently ignored, and a key whose contract cannot be kept (bridged
networking, trickles; an ISO, cache disk or floppy on a backend without them) fails the task at
its start.

>>> job = parse_toml('image = "disk.qcow2"\\nmemory_mib = 512\\n[backend_options]\\naccel = "tcg"\\n')
>>> job.backend, job.image, job.memory_mib, job.backend_options
('qemu', 'disk.qcow2', 512, {'accel': 'tcg'})
>>> job = parse_vbox_xml('<vbox_job><memory_size_mb>1024</memory_size_mb><os_name>Linux26_64</os_name>'
...                      '<vram_size_mb>16</vram_size_mb><network_bridged_mode/><enable_floppyio/></vbox_job>')
>>> job.image, job.memory_mib, job.needs_acceleration, job.floppy
('vm_image.vdi', 1024, True, True)
>>> [w.split(':')[0] for w in job.notes], [w.split(':')[0] for w in job.refused]
(['vram_size_mb'], ['network_bridged_mode'])
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmctl.boinc._job_model import (
    JOB_FILES,
    MAX_JOB_SIZE,
    Job,
    JobError,
    Output,
    PortForwardSpec,
    port_number,
    positive_int,
    relative_name,
)
from vmctl.boinc._job_vbox import VBOX_KEYS, VBOX_OPTIONS, parse_vbox_xml, vbox_image_name

__all__ = [
    "JOB_FILES",
    "VBOX_KEYS",
    "VBOX_OPTIONS",
    "Job",
    "JobError",
    "Output",
    "PortForwardSpec",
    "find_job_file",
    "load_job",
    "parse_toml",
    "parse_vbox_xml",
    "vbox_image_name",
]

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
    "cdrom",
    "cache_disk",
)
_BOOL_KEYS = (
    "network",
    "shared_dir",
    "checkpoints",
    "poweroff_completes",
    "copy_cmdline_to_shared",
    "remote_desktop",
    "apply_cpu_usage_limit",
    "boot_cdrom",
    "floppy",
)
_LIST_KEYS = ("copy_to_shared", "trickle_trigger_files", "intermediate_upload_files")
_NUM_KEYS = ("job_duration", "heartbeat_interval", "min_checkpoint_interval", "retry_delay")
_TOML_KEYS = frozenset(
    (
        *_STR_KEYS,
        *_BOOL_KEYS,
        *_NUM_KEYS,
        "memory_mib",
        "cpus",
        "max_retries",
        *_LIST_KEYS,
        "web_graphics_guest_port",
        "backend_options",
        "port_forward",
        "output",
        "require_acceleration",
    )
)


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
    if "require_acceleration" in data:
        if not isinstance(data["require_acceleration"], bool):
            raise JobError(f"{source}: 'require_acceleration' must be true or false")
        values["needs_acceleration"] = data["require_acceleration"]
    for key in _NUM_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise JobError(f"{source}: '{key}' must be a number of seconds >= 0, not {value!r}")
            values[key] = float(value)
    try:
        if "memory_mib" in data:
            values["memory_mib"] = positive_int("memory_mib", data["memory_mib"])
        if "cpus" in data:
            values["cpus"] = positive_int("cpus", data["cpus"])
        if "max_retries" in data:
            values["max_retries"] = positive_int("max_retries", data["max_retries"])
    except JobError as exc:
        raise JobError(f"{source}: {exc}") from None
    for key in ("image", "kernel", "initrd"):
        if key in values:
            relative_name(f"{source}: '{key}'", values[key])
    for key in _LIST_KEYS:
        if key in data:
            files = data[key]
            if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
                raise JobError(f"{source}: '{key}' must be a list of file names")
            values[key] = tuple(relative_name(f"{source}: {key}", f) for f in files)
    if "web_graphics_guest_port" in data:
        try:
            port = port_number("web_graphics_guest_port", data["web_graphics_guest_port"], False)
            values["web_graphics_guest_port"] = port
        except JobError as exc:
            raise JobError(f"{source}: {exc}") from None
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
        guest_port=port_number("guest_port", pf["guest_port"], False),
        host_port=port_number("host_port", pf.get("host_port", 0), True),
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
        source=relative_name(f"{source}: output 'from'", out["from"]),
        target=relative_name(f"{source}: output 'to'", out["to"]),
        optional=optional,
    )


# -- vbox_job.xml ------------------------------------------------------------------------------------


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
            data = f.read(MAX_JOB_SIZE + 1)
        if len(data) > MAX_JOB_SIZE:
            raise JobError(f"the job file {path} is over {MAX_JOB_SIZE} bytes")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise JobError(f"the job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot read the job file {path}: {exc}") from exc
    if text.lstrip().startswith("<"):
        return parse_vbox_xml(text, path.name)
    return parse_toml(text, path.name)
