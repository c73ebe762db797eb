"""The host's configuration: which backends a job may run on, and how to connect to them.

A job file comes from the project's server, so it may not choose a program to run, a libvirt
URI, a vSphere host or password file, or where the VM's state lives. It names a *profile*
(its ``backend`` key, ``"qemu"`` by default); the volunteer or administrator defines the
profiles in a TOML file at ``$VMCTL_BOINC_CONFIG``, else ``/etc/vmctl/boinc.toml``::

    [profiles.qemu]                 # what a job naming "qemu" (the default) runs on
    backend = "qemu"
    [profiles.qemu.options]         # vmctl.connect() options; "{slot}" and "{project}" expand
    accel = "kvm"

    [profiles.vbox]
    backend = "virtualbox"
    options = { vboxmanage = "/usr/bin/VBoxManage" }

Without a file (or without a ``qemu`` profile in it) the one profile is the built-in ``qemu``:
QEMU with the slot's own state directory. The file must belong to root or to the user running
the adapter and be writable by no one else. A job may still set the options in
:data:`JOB_BACKEND_OPTIONS` (the accelerator), which choose nothing on the host.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "boinc.toml"
>>> _ = path.write_text('[profiles.fast]\\nbackend = "qemu"\\noptions = { accel = "kvm" }\\n')
>>> config = load_host_config(path)
>>> config.profile("fast")
Profile(name='fast', backend='qemu', options={'accel': 'kvm'})
>>> config.profile("qemu")
Profile(name='qemu', backend='qemu', options={})
>>> config.profile("libvirt")
Traceback (most recent call last):
...
vmctl.boinc.hostconfig.HostConfigError: the job names the backend profile 'libvirt', which ...
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmctl.boinc.errors import BoincError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "JOB_BACKEND_OPTIONS",
    "HostConfig",
    "HostConfigError",
    "Profile",
    "load_host_config",
]

CONFIG_ENV = "VMCTL_BOINC_CONFIG"
DEFAULT_CONFIG = Path("/etc/vmctl/boinc.toml")
#: The backend options a job file may set, and the values each may take.
JOB_BACKEND_OPTIONS: Mapping[str, tuple[str, ...]] = {"accel": ("auto", "kvm", "tcg")}
_MAX_SIZE = 1 << 20


class HostConfigError(BoincError):
    """The host configuration is unreadable or unsafe, or has no profile the job names."""


@dataclass(frozen=True)
class Profile:
    """A backend and its connection options, as the host's owner configured them."""

    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


BUILTIN_QEMU = Profile("qemu", "qemu", {})


@dataclass(frozen=True)
class HostConfig:
    """The profiles a job may name."""

    profiles: Mapping[str, Profile]
    path: Path | None = None

    def profile(self, name: str) -> Profile:
        """The profile ``name`` (a job's ``backend`` key)."""
        try:
            return self.profiles[name]
        except KeyError:
            where = f"in {self.path}" if self.path is not None else f"(no {DEFAULT_CONFIG} or ${CONFIG_ENV})"
            raise HostConfigError(
                f"the job names the backend profile {name!r}, which the host does not offer {where}; "
                f"profiles: {', '.join(sorted(self.profiles))}"
            ) from None


def config_path() -> Path:
    """``$VMCTL_BOINC_CONFIG``, else ``/etc/vmctl/boinc.toml``."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid not in (0, os.geteuid()):
        raise HostConfigError(f"{path} belongs to uid {st.st_uid}, neither root nor this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HostConfigError(f"{path} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})")


def load_host_config(path: Path | None = None, *, not_under: Sequence[str | Path] = ()) -> HostConfig:
    """Read the host configuration (``path``, else :func:`config_path`); a missing file means
    the built-in ``qemu`` profile only. A file under one of ``not_under`` (the BOINC data
    directory, which projects' apps may write) is refused."""
    path = config_path() if path is None else Path(path)
    for directory in not_under:
        real, top = os.path.realpath(path), os.path.realpath(directory)
        if os.path.commonpath([real, top]) == top:
            raise HostConfigError(f"the host configuration {path} may not lie in {directory}, where projects write")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return HostConfig({"qemu": BUILTIN_QEMU})
    except OSError as exc:
        raise HostConfigError(f"cannot read the host configuration {path}: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HostConfigError(f"{path} is not a regular file")
        _check_owner(path, st)
        raw = f.read(_MAX_SIZE + 1)
    if len(raw) > _MAX_SIZE:
        raise HostConfigError(f"{path} is over {_MAX_SIZE} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise HostConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"profiles"})
    if unknown:
        raise HostConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; known: 'profiles'")
    profiles = {"qemu": BUILTIN_QEMU}
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise HostConfigError(f"{path}: 'profiles' must be a table of [profiles.NAME] tables")
    for name, table in tables.items():
        profiles[name] = _profile(path, name, table)
    return HostConfig(profiles, path)


def _profile(path: Path, name: str, table: object) -> Profile:
    where = f"{path}: [profiles.{name}]"
    if not isinstance(table, dict):
        raise HostConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - {"backend", "options"})
    if unknown:
        raise HostConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: backend, options")
    backend = table.get("backend")
    if not isinstance(backend, str) or not backend:
        raise HostConfigError(f"{where} needs a 'backend' (a vmctl backend name)")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise HostConfigError(f"{where}: 'options' must be a table of vmctl.connect() options")
    return Profile(name, backend, dict(options))
