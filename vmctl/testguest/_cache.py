"""The per-machine cache of built guests: lookup, locking, and the public entry point."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._apt import _resolve_versions
from ._common import (
    _BUILD_FORMAT,
    _GUEST_DATA,
    _GUEST_FILES,
    _MANIFEST,
    DISK_SIZE,
    GUEST_CMDLINE,
    GUEST_MEDIA_MODULES,
    GUEST_MODULES,
    MEDIA_TAR,
    GuestBuildError,
    Progress,
    TestGuest,
    _Versions,
    log,
)
from ._image import _build


def default_cache_dir() -> Path:
    """``$VMCTL_CACHE_DIR/testguest``, else ``$XDG_CACHE_HOME/vmctl/testguest``, else ``~/.cache/...``."""
    env = os.environ.get("VMCTL_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "testguest"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vmctl" / "testguest"


def ensure_test_guest(cache_dir: Path | None = None, *, progress: Progress | None = None) -> TestGuest:
    """Return the cached test guest, building it first if needed (several minutes at most).

    Safe to call from several processes at once: one builds, the others wait for it.
    Raises GuestBuildError naming what failed (and what to install, for a missing tool).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot create the cache directory {root}: {exc}") from exc
    data_hash = _guest_data_hash()

    def report(msg: str) -> None:
        log.info("%s", msg)
        if progress is not None:
            progress(msg)

    try:
        versions = _resolve_versions(root)
    except GuestBuildError as exc:
        # Without usable package lists a build is impossible; an earlier build still serves.
        fallback = _newest_build(root, data_hash)
        if fallback is None:
            raise
        log.warning("%s; using the cached build %s", exc, fallback.parent.name)
        return _load(fallback)

    target = root / _build_name(versions, data_hash)
    if (target / _MANIFEST).is_file():
        return _load(target / _MANIFEST)

    with _locked(root / ".lock", report):
        if (target / _MANIFEST).is_file():  # built by another process while we waited
            return _load(target / _MANIFEST)
        _remove_stale_temp_dirs(root)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            started = time.monotonic()
            _build(tmp, versions, data_hash, report)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            os.rename(tmp, target)
            report(f"test guest built in {time.monotonic() - started:.1f} s: {target}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _load(target / _MANIFEST)


def _guest_data_hash() -> str:
    h = hashlib.sha256()
    h.update(f"format={_BUILD_FORMAT}\nmodules={','.join(GUEST_MODULES)}\n".encode())
    h.update(f"media_modules={','.join(GUEST_MEDIA_MODULES)}\n".encode())
    h.update(f"disk={DISK_SIZE}\n".encode())
    for name, dest, mode in _GUEST_FILES:
        path = _GUEST_DATA / name
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise GuestBuildError(f"guest data file missing: {path}: {exc}") from exc
        h.update(f"{name} {dest} {mode:o} {len(content)}\n".encode())
        h.update(content)
    return h.hexdigest()[:16]


def _build_name(v: _Versions, data_hash: str) -> str:
    raw = f"{v.kernel_package}_{v.kernel_version}_bb{v.busybox_version}_{data_hash}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", raw)


def _load(manifest: Path) -> TestGuest:
    d = manifest.parent
    info = json.loads(manifest.read_text())
    return TestGuest(
        kernel=d / "vmlinuz",
        initrd=d / "initrd.img",
        disk=d / "disk.qcow2",
        cmdline=str(info.get("cmdline", GUEST_CMDLINE)),
        media_modules=d / MEDIA_TAR if (d / MEDIA_TAR).is_file() else None,
    )


def _newest_build(root: Path, data_hash: str) -> Path | None:
    found = [m for m in root.glob(f"*_{data_hash}/{_MANIFEST}") if m.is_file()]
    return max(found, key=lambda m: m.stat().st_mtime) if found else None


def _remove_stale_temp_dirs(root: Path) -> None:
    # Only called with the lock held, so no other build is using them.
    for stale in root.glob(".tmp-*"):
        log.info("removing the leftover build directory %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _locked(path: Path, report: Progress, timeout: float = 3600.0) -> Iterator[None]:
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise GuestBuildError(f"cannot lock {path}: {exc}") from exc
            if not waiting:
                report(f"waiting for another process building the test guest ({path})")
                waiting = True
            if time.monotonic() > deadline:
                raise GuestBuildError(f"timed out after {timeout:.0f} s waiting for the lock {path}")
            time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
