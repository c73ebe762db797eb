"""Reading back what a backend recorded about a machine, trusting no more of it than needed.

A machine's record (a JSON file, a libvirt metadata element, VirtualBox extradata, a vSphere
config key) is written by vmctl but may be edited by anyone who can write where it lives. So
what is read back is checked again:

- :func:`spec_from_record` rebuilds the :class:`~vmctl.types.MachineSpec` the machine was
  created from. Files are not required to exist any more (a base image may have moved, or lives
  on another host), but everything else is validated as at creation: the name, the numbers, the
  share tags (they become device ids and mount tags), the port forwards, the paths' form.
- :func:`inside` resolves a path the record names that must lie in the machine's own directory
  (an overlay, a saved state) and refuses one that escapes it, through ``..`` or a link.

>>> from vmctl.backend.records import spec_from_record
>>> spec = spec_from_record({"name": "m", "disk": "/gone/base.qcow2", "shared_dirs": {"data": "/srv"}})
>>> spec.disk, spec.shared_dirs["data"]
(PosixPath('/gone/base.qcow2'), PosixPath('/srv'))
>>> spec_from_record({"name": "m", "disk": "/gone/base.qcow2", "shared_dirs": {"a,b": "/srv"}})
Traceback (most recent call last):
...
vmctl.errors.InvalidSpec: invalid shared_dirs: tag 'a,b' must match [A-Za-z0-9][A-Za-z0-9_-]* (at most 31)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from vmctl.errors import InvalidSpec
from vmctl.types import MachineSpec, Network

__all__ = ["inside", "spec_from_record"]


def spec_from_record(data: Mapping[str, Any], *, adopted: bool = False) -> MachineSpec:
    """The spec recorded by :meth:`MachineSpec.to_dict`, validated except for files existing.

    Raises :class:`InvalidSpec` for anything :class:`MachineSpec` would refuse at creation other
    than a missing file, and for keys it does not know. With ``adopted`` (a spec read from the
    configuration of a machine vmctl did not create) it may name neither a disk nor a kernel.
    """
    if not isinstance(data, Mapping):
        raise InvalidSpec("spec", f"the recorded spec {data!r} is not a mapping")
    known = {f.name: f for f in fields(MachineSpec)}
    unknown = set(data) - set(known)
    if unknown:
        raise InvalidSpec("spec", "unknown keys in the recorded spec: " + ", ".join(sorted(map(str, unknown))))
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name in data:
            values[name] = data[name]
        elif f.default_factory is not MISSING:
            values[name] = f.default_factory()
        else:
            values[name] = f.default
    net = values["network"]
    if isinstance(net, Mapping):
        if set(net) - {"port_forwards"}:
            raise InvalidSpec("network", "unknown keys: " + ", ".join(sorted(map(str, set(net) - {"port_forwards"}))))
        values["network"] = Network(port_forwards=net.get("port_forwards", ()))
    elif net is not None and not isinstance(net, Network):
        raise InvalidSpec("network", f"{net!r} is not a recorded network")
    spec = object.__new__(MachineSpec)
    for name, value in values.items():
        object.__setattr__(spec, name, value)
    spec._validate(check_files=False, need_boot=not adopted)
    return spec


def inside(directory: Path, path: str | os.PathLike[str], what: str = "path") -> Path:
    """``path`` (relative to ``directory``, or absolute) resolved, if it lies within ``directory``.

    Links are resolved before the check, so neither ``..`` nor a symlink leads out. Raises
    :class:`InvalidSpec` naming ``what`` otherwise.

    >>> inside(Path("/var/m"), "disk.qcow2")
    PosixPath('/var/m/disk.qcow2')
    >>> inside(Path("/var/m"), "../other/disk.qcow2", "overlay")
    Traceback (most recent call last):
    ...
    vmctl.errors.InvalidSpec: invalid overlay: ../other/disk.qcow2 is outside /var/m
    """
    text = os.fspath(path)
    if not isinstance(text, str) or text == "" or "\x00" in text:
        raise InvalidSpec(what, f"{path!r} is not a path")
    root = Path(os.path.realpath(directory))
    target = Path(os.path.realpath(Path(directory) / text))
    if target != root and root not in target.parents:
        raise InvalidSpec(what, f"{text} is outside {directory}")
    return target
