"""Which kernel and busybox packages to use (apt's candidates), and downloading them."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ._common import BUSYBOX_PACKAGE, KERNEL_METAPACKAGE, GuestBuildError, _Versions
from ._tools import _apt_options, _run

_APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_fingerprint() -> str:
    h = hashlib.sha256()
    for base in (_APT_LISTS, Path("/etc/apt/preferences.d"), Path("/etc/apt/sources.list.d")):
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        for p in entries:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for f in (Path("/etc/apt/preferences"), Path("/etc/apt/sources.list")):
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resolve_versions(root: Path) -> _Versions:
    """The candidate kernel package and versions, memoised while apt's lists are unchanged."""
    memo = root / "apt-resolved.json"
    fingerprint = _apt_lists_fingerprint()
    try:
        saved = json.loads(memo.read_text())
        if saved.get("fingerprint") == fingerprint:
            return _Versions(
                kernel_package=str(saved["kernel_package"]),
                kernel_version=str(saved["kernel_version"]),
                busybox_version=str(saved["busybox_version"]),
            )
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    versions = _query_versions()
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **versions.__dict__}))
    os.replace(tmp, memo)
    return versions


def _parse_stanzas(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            out.setdefault(fields["Package"], fields)
    return out


def _query_versions() -> _Versions:
    no_lists = (
        "apt has no package lists (or no candidate for {pkg}); run `apt-get update` once "
        "so that the test guest can be downloaded"
    )
    try:
        proc = _run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE, BUSYBOX_PACKAGE],
            what="looking up the kernel and busybox packages",
            timeout=120,
        )
    except GuestBuildError as exc:
        if "No packages found" in str(exc) or "Unable to locate" in str(exc):
            raise GuestBuildError(f"{no_lists.format(pkg=KERNEL_METAPACKAGE)} ({exc})") from exc
        raise
    stanzas = _parse_stanzas(proc.stdout.decode(errors="replace"))
    meta = stanzas.get(KERNEL_METAPACKAGE)
    bb = stanzas.get(BUSYBOX_PACKAGE)
    if meta is None:
        raise GuestBuildError(no_lists.format(pkg=KERNEL_METAPACKAGE))
    if bb is None or "Version" not in bb:
        raise GuestBuildError(no_lists.format(pkg=BUSYBOX_PACKAGE))
    m = re.search(r"(linux-image-[0-9][^\s,(|]*)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?", meta.get("Depends", ""))
    if m is None:
        raise GuestBuildError(
            f"cannot find the kernel package in {KERNEL_METAPACKAGE}'s dependencies: {meta.get('Depends', '')!r}"
        )
    kernel_version = m.group(2) or meta.get("Version", "")
    if not kernel_version:
        raise GuestBuildError(f"cannot tell the version of {m.group(1)}")
    return _Versions(kernel_package=m.group(1), kernel_version=kernel_version, busybox_version=bb["Version"])


def _download(dest: Path, specs: list[str]) -> None:
    try:
        _run(
            ["apt-get", *_apt_options(), "download", *specs],
            what="downloading the test guest's packages",
            timeout=1200,
            cwd=dest,
        )
    except GuestBuildError as exc:
        text = str(exc)
        if any(
            s in text
            for s in (
                "Unable to locate",
                "has no installation candidate",
                "Can't select",
                "not found",
                "No packages found",
            )
        ):
            raise GuestBuildError(
                f"{text}\napt's package lists look empty or stale: run `apt-get update` once"
            ) from exc
        raise
