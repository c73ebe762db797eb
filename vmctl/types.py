"""Value types shared by every backend: states, machine specs, usage, snapshots, capabilities.

>>> import pathlib, tempfile, vmctl
>>> disk = pathlib.Path(tempfile.mkdtemp()) / "base.qcow2"
>>> _ = disk.write_bytes(b"")
>>> spec = vmctl.MachineSpec(name="job-1", disk=disk, memory_mib=128)
>>> spec.name, spec.cpus, spec.overlay
('job-1', 1, True)
>>> vmctl.MachineSpec(name="../etc", disk=disk)
Traceback (most recent call last):
...
vmctl.errors.InvalidSpec: invalid name: '../etc' must match [A-Za-z0-9][A-Za-z0-9._-]* and be at most 64 characters
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vmctl.errors import InvalidSpec

__all__ = [
    "SPEC_FEATURES",
    "USAGE_FIELDS",
    "BackendInfo",
    "Capabilities",
    "DiskUsage",
    "MachineSpec",
    "Network",
    "PortForward",
    "Snapshot",
    "State",
    "Usage",
    "spec_features",
    "validate_name",
    "validate_snapshot_name",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}")
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_CPUS = 512
#: virtio-blk PCI slots are plenty; a bound keeps a hostile spec from making thousands
MAX_EXTRA_DISKS = 16


class State(enum.StrEnum):
    """The state of a machine, the same on every backend."""

    STOPPED = "stopped"
    """Defined, not running, no saved state: ``start`` boots it."""
    RUNNING = "running"
    PAUSED = "paused"
    """Frozen in host memory: ``resume`` continues it."""
    SUSPENDED = "suspended"
    """State saved to disk, no host process: ``start`` restores it."""
    CRASHED = "crashed"
    """The hypervisor process died or the guest crashed: ``start`` boots it afresh."""
    UNKNOWN = "unknown"


def validate_name(name: object, field_name: str = "name") -> str:
    """Return ``name`` if it is a safe machine name, else raise :class:`InvalidSpec`.

    Names become file names, libvirt domain names and CLI arguments, so only ASCII letters,
    digits, ``.``, ``_`` and ``-`` are accepted, starting with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidSpec(
            field_name,
            f"{name!r} must match [A-Za-z0-9][A-Za-z0-9._-]* and be at most 64 characters",
        )
    return name


def validate_snapshot_name(name: object) -> str:
    """Snapshot names follow the same rule as machine names."""
    return validate_name(name, "snapshot name")


def _path(value: object, field_name: str) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "" or "\x00" in str(value):
        raise InvalidSpec(field_name, f"{value!r} is not a path")
    return Path(value).expanduser().absolute()


def _existing_file(value: str | Path | None, field_name: str, check_files: bool = True) -> Path | None:
    if value is None:
        return None
    path = _path(value, field_name)
    if check_files and not path.is_file():
        raise InvalidSpec(field_name, f"{path} does not exist or is not a regular file")
    return path


@dataclass(frozen=True)
class PortForward:
    """A TCP or UDP port of the guest reachable on the host at ``127.0.0.1:host_port``."""

    host_port: int
    guest_port: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        for label, port in (("host_port", self.host_port), ("guest_port", self.guest_port)):
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise InvalidSpec(f"port forward {label}", f"{port!r} is not a port number")
        if self.protocol not in ("tcp", "udp"):
            raise InvalidSpec("port forward protocol", f"{self.protocol!r} is not tcp or udp")

    @property
    def host_address(self) -> str:
        """Forwarded ports are bound to loopback only."""
        return "127.0.0.1"


def _port_forward(value: object) -> PortForward:
    if isinstance(value, PortForward):
        return value
    if not isinstance(value, Mapping):
        raise InvalidSpec("port forward", f"{value!r} is not a PortForward or a mapping")
    unknown = set(value) - {"host_port", "guest_port", "protocol"}
    if unknown:
        raise InvalidSpec("port forward", "unknown keys: " + ", ".join(sorted(map(str, unknown))))
    try:
        return PortForward(**dict(value))
    except TypeError as exc:
        raise InvalidSpec("port forward", str(exc)) from None


@dataclass(frozen=True)
class Network:
    """User-mode NAT networking: the guest reaches out, the host reaches in only via forwards."""

    port_forwards: Sequence[PortForward] = ()

    def __post_init__(self) -> None:
        if isinstance(self.port_forwards, (str, bytes)) or not isinstance(self.port_forwards, Sequence):
            raise InvalidSpec("port forwards", f"{self.port_forwards!r} is not a list")
        forwards = tuple(_port_forward(pf) for pf in self.port_forwards)
        seen: set[tuple[int, str]] = set()
        for pf in forwards:
            key = (pf.host_port, pf.protocol)
            if key in seen:
                raise InvalidSpec("port forwards", f"host port {pf.host_port}/{pf.protocol} given twice")
            seen.add(key)
        object.__setattr__(self, "port_forwards", forwards)


@dataclass(frozen=True)
class MachineSpec:
    """What a machine is made of. Validated on construction; paths become absolute.

    ``disk`` is the base image. With ``overlay=True`` (the default) the machine writes to a
    copy-on-write overlay and the base is never copied or modified.
    """

    name: str
    disk: Path | None = None
    overlay: bool = True
    memory_mib: int = 256
    cpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    network: Network | None = None
    shared_dirs: Mapping[str, Path] = field(default_factory=dict)
    serial_log: Path | None = None
    readonly_shares: frozenset[str] = frozenset()
    """Tags of ``shared_dirs`` the guest may only read (the backend enforces it)."""
    cdrom: Path | None = None
    """An ISO image the guest sees as a read-only CD-ROM drive (the file is never written)."""
    boot_from_cdrom: bool = False
    """Boot the ``cdrom`` first, then the disk (else the disk first, then the CD-ROM)."""
    extra_disks: Sequence[Path] = ()
    """More disks after ``disk``, each attached as it is (no overlay: the guest writes to the
    file itself, which keeps what it wrote across the machine's restarts), in this order."""
    floppy: Path | None = None
    """A raw floppy image the guest sees as its first floppy drive (writable)."""
    remote_desktop: bool = False
    """The machine's screen on a remote desktop server listening on 127.0.0.1 only, at a port
    the backend picks free at each start (:meth:`vmctl.Machine.remote_desktop_address`); no
    password, so any local user may connect (backends with the ``remote_desktop`` capability)."""

    def __post_init__(self) -> None:
        self._validate(check_files=True)

    def _validate(self, check_files: bool, need_boot: bool = True) -> None:
        """Check every field; with ``check_files`` also that the files and directories exist.

        Without it (a spec read back from a machine's record, whose base image may have moved)
        everything else is still checked: names, numbers, share tags, port forwards, paths.
        Without ``need_boot`` (an adopted machine's configuration) it may have neither a disk
        nor a kernel (it boots from a CD or the network).
        """
        validate_name(self.name)
        for label, value, top in (("memory_mib", self.memory_mib, MAX_MEMORY_MIB), ("cpus", self.cpus, MAX_CPUS)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise InvalidSpec(label, f"{value!r} must be an integer from 1 to {top}")
        if not isinstance(self.overlay, bool):
            raise InvalidSpec("overlay", f"{self.overlay!r} is not a boolean")
        if not isinstance(self.remote_desktop, bool):
            raise InvalidSpec("remote_desktop", f"{self.remote_desktop!r} is not a boolean")
        object.__setattr__(self, "disk", _existing_file(self.disk, "disk", check_files))
        object.__setattr__(self, "kernel", _existing_file(self.kernel, "kernel", check_files))
        object.__setattr__(self, "initrd", _existing_file(self.initrd, "initrd", check_files))
        if self.initrd is not None and self.kernel is None:
            raise InvalidSpec("initrd", "an initrd needs a kernel")
        if self.cmdline is not None:
            if not isinstance(self.cmdline, str) or "\x00" in self.cmdline or "\n" in self.cmdline:
                raise InvalidSpec("cmdline", "must be one line of text")
            if self.kernel is None:
                raise InvalidSpec("cmdline", "a kernel command line needs a kernel")
        self._validate_media(check_files)
        if need_boot and self.disk is None and self.kernel is None and self.cdrom is None:
            raise InvalidSpec("disk", "a machine needs a disk image, a kernel or a CD-ROM to boot")
        if self.network is not None and not isinstance(self.network, Network):
            raise InvalidSpec("network", f"{self.network!r} is not a vmctl.Network")
        if not isinstance(self.shared_dirs, Mapping):
            raise InvalidSpec("shared_dirs", f"{self.shared_dirs!r} is not a mapping of tag to directory")
        shared: dict[str, Path] = {}
        for tag, directory in dict(self.shared_dirs).items():
            if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
                raise InvalidSpec("shared_dirs", f"tag {tag!r} must match [A-Za-z0-9][A-Za-z0-9_-]* (at most 31)")
            path = _path(directory, "shared_dirs")
            if check_files and not path.is_dir():
                raise InvalidSpec("shared_dirs", f"{path} does not exist or is not a directory")
            shared[tag] = path
        object.__setattr__(self, "shared_dirs", shared)
        if isinstance(self.readonly_shares, (str, bytes)) or not isinstance(
            self.readonly_shares, (Sequence, frozenset, set)
        ):
            raise InvalidSpec("readonly_shares", f"{self.readonly_shares!r} is not a set of share tags")
        readonly = frozenset(self.readonly_shares)
        for tag in readonly:
            if tag not in shared:
                raise InvalidSpec("readonly_shares", f"{tag!r} is not a tag of shared_dirs")
        object.__setattr__(self, "readonly_shares", readonly)
        if self.serial_log is not None:
            log = _path(self.serial_log, "serial_log")
            if check_files and not log.parent.is_dir():
                raise InvalidSpec("serial_log", f"directory {log.parent} does not exist")
            if check_files and log.is_dir():
                raise InvalidSpec("serial_log", f"{log} is a directory")
            object.__setattr__(self, "serial_log", log)

    def _validate_media(self, check_files: bool) -> None:
        """The CD-ROM, the extra disks and the floppy: existing regular files, each used once."""
        object.__setattr__(self, "cdrom", _existing_file(self.cdrom, "cdrom", check_files))
        object.__setattr__(self, "floppy", _existing_file(self.floppy, "floppy", check_files))
        if not isinstance(self.boot_from_cdrom, bool):
            raise InvalidSpec("boot_from_cdrom", f"{self.boot_from_cdrom!r} is not a boolean")
        if self.boot_from_cdrom and self.cdrom is None:
            raise InvalidSpec("boot_from_cdrom", "booting from the CD-ROM needs a cdrom")
        if isinstance(self.extra_disks, (str, bytes, Path)) or not isinstance(self.extra_disks, Sequence):
            raise InvalidSpec("extra_disks", f"{self.extra_disks!r} is not a list of disk images")
        extra = tuple(_existing_file(d, "extra_disks", check_files) for d in self.extra_disks)
        if len(extra) > MAX_EXTRA_DISKS:
            raise InvalidSpec("extra_disks", f"at most {MAX_EXTRA_DISKS} extra disks, not {len(extra)}")
        object.__setattr__(self, "extra_disks", extra)
        seen: dict[Path, str] = {}
        for label, path in (
            ("disk", self.disk),
            ("cdrom", self.cdrom),
            ("floppy", self.floppy),
            *(("extra_disks", d) for d in extra),
        ):
            if path is None:
                continue
            if path in seen:
                raise InvalidSpec(label, f"{path} is also the machine's {seen[path]}: each image is attached once")
            seen[path] = label

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and TOML-friendly dict (paths as strings, ``None`` values left out)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "shared_dirs":
                value = {tag: str(path) for tag, path in value.items()}
            elif f.name == "readonly_shares":
                if not value:
                    continue
                value = sorted(value)
            elif f.name == "remote_desktop" and not value:
                continue
            elif f.name == "network":
                value = {"port_forwards": [asdict(pf) for pf in value.port_forwards]}
            elif f.name in ("extra_disks", "boot_from_cdrom"):
                if not value:
                    continue
                if f.name == "extra_disks":
                    value = [str(path) for path in value]
            data[f.name] = value
        return data

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> MachineSpec:
        """Deprecated: backends use :func:`vmctl.backend.records.spec_from_record`."""
        from vmctl.backend.records import spec_from_record

        return spec_from_record(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MachineSpec:
        """Build a spec from :meth:`to_dict` output or a TOML table; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpec("spec", "unknown keys: " + ", ".join(sorted(unknown)))
        values = dict(data)
        net = values.get("network")
        if isinstance(net, Mapping):
            unknown_net = set(net) - {"port_forwards"}
            if unknown_net:
                raise InvalidSpec("network", "unknown keys: " + ", ".join(sorted(map(str, unknown_net))))
            values["network"] = Network(port_forwards=net.get("port_forwards", ()))
        elif net is True:
            values["network"] = Network()
        elif net is False:
            values["network"] = None
        elif net is not None and not isinstance(net, Network):
            raise InvalidSpec("network", f"{net!r} is not a table, true or false")
        shared = values.get("shared_dirs")
        if shared is not None and not isinstance(shared, Mapping):
            raise InvalidSpec("shared_dirs", f"{shared!r} is not a table of tag = directory")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidSpec):
                raise
            raise InvalidSpec("spec", str(exc)) from None


USAGE_FIELDS = (
    "cpu_seconds",
    "memory_bytes",
    "disk_read_bytes",
    "disk_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
)


@dataclass(frozen=True)
class Usage:
    """Resource usage of one machine, cumulative since its current host process started.

    A field is ``None`` where the backend cannot measure it (see
    :attr:`Capabilities.usage_fields`) or where the machine has no running process.
    """

    machine: str
    taken_at: float = field(default_factory=time.time)
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiskUsage:
    """What :meth:`vmctl.Machine.disk_usage` measured: ``bytes`` allocated on the storage of the
    hypervisor's host by the files the backend keeps for one machine, and ``paths``, those files
    and directories as paths on that host (so a caller that also measures a tree holding some of
    them counts them once)."""

    machine: str
    bytes: int
    paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["paths"] = list(self.paths)
        return data


@dataclass(frozen=True)
class Snapshot:
    """A named snapshot. ``has_memory`` says whether reverting to it resumes a running guest."""

    name: str
    created: float
    has_memory: bool
    description: str = ""
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The parts of a :class:`MachineSpec` a backend may be unable to give, each a flag of
#: :class:`Capabilities` of the same name.
SPEC_FEATURES: Mapping[str, str] = {
    "kernel_boot": "direct kernel boot (kernel, initrd, cmdline)",
    "shared_dirs": "shared directories",
    "port_forwards": "port forwards",
    "serial_log": "a serial log file on this host",
    "overlay": "an overlay disk over the base image (overlay=True)",
    "direct_disk": "writing to the disk image itself (overlay=False)",
    "cdrom": "a CD-ROM image (cdrom, boot_from_cdrom)",
    "extra_disks": "extra disks attached as they are (extra_disks)",
    "floppy": "a floppy image (floppy)",
    "remote_desktop": "a remote desktop of the machine's screen on loopback (remote_desktop=True)",
}


def spec_features(spec: MachineSpec) -> list[str]:
    """The :data:`SPEC_FEATURES` that ``spec`` uses."""
    used = []
    if spec.kernel is not None:
        used.append("kernel_boot")
    if spec.shared_dirs:
        used.append("shared_dirs")
    if spec.network is not None and spec.network.port_forwards:
        used.append("port_forwards")
    if spec.serial_log is not None:
        used.append("serial_log")
    if spec.disk is not None:
        used.append("overlay" if spec.overlay else "direct_disk")
    if spec.cdrom is not None:
        used.append("cdrom")
    if spec.extra_disks:
        used.append("extra_disks")
    if spec.floppy is not None:
        used.append("floppy")
    if spec.remote_desktop:
        used.append("remote_desktop")
    return used


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. A verb whose flag is False raises :class:`vmctl.Unsupported`, and
    so does :meth:`vmctl.Hypervisor.create` for a spec using a feature whose flag is False.

    >>> caps = Capabilities(kernel_boot=False)
    >>> caps.refused_features(MachineSpec.from_record({"name": "m", "kernel": "/boot/vmlinuz"}))
    ['kernel_boot']
    """

    pause: bool = True
    suspend: bool = True
    snapshots: bool = True
    live_snapshots: bool = True
    """Snapshots of a running machine, including its memory."""
    graceful_restart: bool = True
    network_toggle: bool = True
    cpu_limit: bool = False
    events: bool = False
    """State changes are pushed by the hypervisor (``wait_for`` does not poll)."""
    usage_fields: frozenset[str] = frozenset(USAGE_FIELDS)
    kernel_boot: bool = True
    shared_dirs: bool = True
    port_forwards: bool = True
    serial_log: bool = True
    overlay: bool = True
    direct_disk: bool = True
    disk_usage: bool = False
    """:meth:`vmctl.Machine.disk_usage` knows the bytes the backend's files of a machine use."""
    cdrom: bool = False
    """``MachineSpec.cdrom`` and ``boot_from_cdrom`` (False by default: a backend claims what it built)."""
    extra_disks: bool = False
    """``MachineSpec.extra_disks``."""
    floppy: bool = False
    """``MachineSpec.floppy``."""
    screenshot: bool = False
    """:meth:`vmctl.Machine.screenshot` reads the guest's screen as PNG."""
    remote_desktop: bool = False
    """``create`` with ``remote_desktop=True``; :meth:`vmctl.Machine.remote_desktop_address`."""

    def refused_features(self, spec: MachineSpec) -> list[str]:
        """The :data:`SPEC_FEATURES` that ``spec`` uses and these capabilities lack."""
        return [name for name in spec_features(spec) if not getattr(self, name)]

    def without(self, *flags: str) -> Capabilities:
        """A copy with the named flags False (a machine lacking what its backend has)."""
        changes: dict[str, Any] = dict.fromkeys(flags, False)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage_fields"] = sorted(self.usage_fields)
        return data


@dataclass(frozen=True)
class BackendInfo:
    """One installed backend, as listed by :func:`vmctl.backends`."""

    name: str
    usable: bool
    reason: str | None = None
    hint: str | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
