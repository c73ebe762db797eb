"""Kernel modules for the guest and their dependencies, read from an unpacked kernel package."""

from __future__ import annotations

import gzip
import lzma
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from ._common import GuestBuildError, log
from ._tools import _run


def _modinfo(data: bytes, what: str) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 kernel module's .modinfo section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise GuestBuildError(f"{what} is not a 64-bit ELF kernel module")
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from(end + "IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, off, size = section(i)
        name = data[stroff + name_off : data.index(b"\0", stroff + name_off)]
        if name == b".modinfo":
            for item in data[off : off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def _module_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".ko"):
        return raw
    if name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if name.endswith(".ko.zst"):
        return _run(["zstd", "-dc", str(path)], what=f"decompressing {name}", timeout=60).stdout
    raise GuestBuildError(f"unknown kernel module format: {path}")


def _canon(name: str) -> str:
    return name.replace("-", "_")


def _module_stem(path: Path) -> str:
    return _canon(path.name.split(".ko", 1)[0])


def _resolve_modules(moddir: Path, wanted: Sequence[str]) -> list[tuple[str, bytes]]:
    """(file name, uncompressed .ko) for wanted and their dependencies, dependencies first.

    Uses modules.dep when the package ships one (Debian's does not: depmod runs at install
    time), else the ``depends=`` field of each module's .modinfo section, which is what depmod
    reads. Wanted modules that are built into the kernel are skipped.
    """
    files = {_module_stem(p): p for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.\w+)?$", p.name)}
    builtin: set[str] = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.is_file():
        builtin = {_module_stem(Path(line)) for line in builtin_file.read_text().split()}
    depfile = moddir / "modules.dep"
    deps_from_file: dict[str, list[str]] | None = None
    if depfile.is_file():
        deps_from_file = {}
        for line in depfile.read_text().splitlines():
            head, _, tail = line.partition(":")
            deps_from_file[_module_stem(Path(head))] = [_module_stem(Path(t)) for t in tail.split()]

    cache: dict[str, bytes] = {}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, parent: str | None) -> None:
        name = _canon(name)
        if name in order:
            return
        if name in visiting:
            raise GuestBuildError(f"kernel module dependency cycle at {name}")
        path = files.get(name)
        if path is None:
            if name in builtin:
                log.debug("module %s is built into the kernel", name)
                return
            via = f" (needed by {parent})" if parent else ""
            raise GuestBuildError(f"kernel module {name}{via} not found under {moddir}")
        visiting.add(name)
        data = _module_bytes(path)
        cache[name] = data
        if deps_from_file is not None:
            deps = deps_from_file.get(name, [])
        else:
            deps = [d for v in _modinfo(data, str(path)).get("depends", []) for d in v.split(",") if d]
        for dep in deps:
            visit(dep, name)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(w, None)
    log.info("guest kernel modules: %s", " ".join(order))
    return [(f"{name}.ko", cache[name]) for name in order]
