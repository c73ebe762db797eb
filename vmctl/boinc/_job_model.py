"""The job as vmctl-boinc understands it, whatever file it came from: the :class:`Job` record,
its cross-key checks, and the name and number checks both job-file parsers share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vmctl.boinc.errors import BoincError
from vmctl.boinc.hostconfig import JOB_BACKEND_OPTIONS

__all__ = [
    "DEFAULT_SHARED_TAG",
    "JOB_FILES",
    "MAX_JOB_SIZE",
    "RESERVED_SLOT_NAMES",
    "VBOX_DEFAULT_IMAGE",
    "Job",
    "JobError",
    "Output",
    "PortForwardSpec",
    "port_number",
    "positive_int",
    "relative_name",
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
        "trickle_up.xml",
        *JOB_FILES,
    }
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_JOB_SIZE = 1 << 20


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
    checkpoint_reports: bool = False
    """Without snapshots (``checkpoints = false``), still tell the client of a checkpoint every
    checkpoint period, as vboxwrapper does for ``disable_automatic_checkpoints``: the guest keeps
    its own progress, and the CPU time so far is the task's on a restart."""
    poweroff_completes: bool = True
    max_retries: int = 10
    retry_delay: float = 30.0
    outputs: tuple[Output, ...] = ()
    notes: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    """Keys whose contract no backend here can keep (the guest or the project would wait for
    something never given): the task fails at its start (206), naming each, instead of running a
    VM that cannot do its work."""
    image_in_project: bool = False
    """vboxwrapper's ``multiattach_vdi_file``: ``image`` is a physical file name in the project
    directory, not an open name in the slot."""
    needs_acceleration: bool = False
    """The job cannot run without hardware virtualization (vboxwrapper: a 64-bit ``os_name``)."""
    share_keys: tuple[str, ...] = ()
    """The job file's keys that need the backend's shared folders (named when it has none)."""
    cdrom: str | None = None
    """An ISO in the slot the guest gets as a CD-ROM (vboxwrapper's ``enable_isocontextualization``:
    ``vm_isocontext.iso``)."""
    boot_cdrom: bool = False
    """The VM boots its CD-ROM first (vboxwrapper's ``boot_iso``)."""
    cache_disk: str | None = None
    """A disk in the slot the guest gets as a second disk, written in place (``enable_cache_disk``)."""
    floppy: bool = False
    """A floppy with init_data.xml (``enable_floppyio``), or with CERN's data format."""
    cern_dataformat: bool = False
    """The floppy holds vboxwrapper's ``BOINC_USERNAME=``... lines, not init_data.xml."""
    trickle_trigger_files: tuple[str, ...] = ()
    """Files in the shared directory whose contents go to the project as a trickle-up message
    (variety: the file's name); each is deleted once handed to the client."""
    intermediate_upload_files: tuple[str, ...] = ()
    """Result output files (open names) the guest may write to the shared directory before the
    task ends: each is copied to its output file and uploaded at once."""
    web_graphics_guest_port: int = 0
    """A forwarded guest port whose host side the client shows as the task's web graphics URL."""
    remote_desktop: bool = False
    """The VM's screen on a loopback remote desktop (QEMU VNC, VirtualBox VRDE) the client shows (backends that can)."""
    apply_cpu_usage_limit: bool | None = None
    """Cap the VM at the preference ``cpu_usage_limit`` (the client does not throttle the app
    versions of a ``vbox*`` plan class). None: when ``init_data.xml`` names such a plan class
    (clients 8.2 and later), or for a ``vbox_job.xml`` (as vboxwrapper always does)."""

    @property
    def has_shared_dir(self) -> bool:
        return self.shared_dir or self.share_slot_dir

    def keys_needing_shares(self) -> tuple[str, ...]:
        """The job file's keys that need shared folders (none: the job runs without)."""
        if self.share_keys:
            return self.share_keys
        return tuple(
            key
            for key, value in (
                ("shared_dir", self.shared_dir),
                ("share_slot_dir", self.share_slot_dir),
                ("share_project_dir", self.share_project_dir),
                ("scratch_dir", self.scratch_dir),
            )
            if value
        )

    def with_overrides(self, *, cpus: int | None = None, memory_mib: int | None = None) -> Job:
        """The job with command-line overrides (vboxwrapper's ``--nthreads``, ``--memory_size_mb``)."""
        changes: dict[str, Any] = {}
        if cpus is not None:
            changes["cpus"] = positive_int("--nthreads", cpus)
        if memory_mib is not None:
            changes["memory_mib"] = positive_int("--memory_size_mb", memory_mib)
        return replace(self, **changes) if changes else self

    def check(self) -> Job:
        """Cross-key checks; returns self."""
        if self.image is None and self.kernel is None and self.cdrom is None:
            raise JobError(f"{self.source}: the job needs a disk 'image' or a 'kernel' to boot")
        if self.boot_cdrom and self.cdrom is None:
            raise JobError(f"{self.source}: booting from the CD-ROM needs a CD-ROM image")
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
                ("trickle_trigger_files", self.trickle_trigger_files),
                ("intermediate_upload_files", self.intermediate_upload_files),
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
            *self.trickle_trigger_files,
        ):
            if name is not None:
                relative_name(f"{self.source}: shared-directory file", name)
        for name in self.intermediate_upload_files:
            if not _PLAIN_NAME.fullmatch(name) or name in RESERVED_SLOT_NAMES:
                raise JobError(
                    f"{self.source}: intermediate upload file {name!r} must be a plain file name (the result "
                    "output's open name) and none of the slot's own files"
                )
        if self.web_graphics_guest_port and not any(
            pf.guest_port == self.web_graphics_guest_port for pf in self.port_forwards
        ):
            raise JobError(
                f"{self.source}: web graphics on guest port {self.web_graphics_guest_port} needs a port forward "
                "to that port"
            )
        for what, name in (
            ("image", self.image),
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("cdrom", self.cdrom),
            ("cache disk", self.cache_disk),
        ):
            if name is not None:
                relative_name(f"{self.source}: '{what}'", name)
        for name in self.copy_to_shared:
            relative_name(f"{self.source}: copy_to_shared", name)
        for out in self.outputs:
            relative_name(f"{self.source}: output 'to'", out.target)
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


def positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JobError(f"'{key}' must be a positive integer, not {value!r}")
    return value


def relative_name(what: str, name: str) -> str:
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise JobError(f"{what} {name!r} must be a relative name without '..'")
    return name


def port_number(key: str, value: object, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise JobError(f"'{key}' must be a port number, not {value!r}")
    return value
