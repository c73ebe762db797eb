"""Paths inside an unpacked Debian package, whether it is laid out merged-/usr or classic.

Debian 13's packages ship their files under ``usr/`` only (``usr/lib/modules``, ``usr/bin``);
Debian 12's kernel and busybox packages still ship ``lib/modules`` and ``bin``. Look for both, and
follow no symbolic link: an unpacked package is data, not a root file system.

>>> import tempfile
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> (root / "usr/bin").mkdir(parents=True)
>>> _ = (root / "usr/bin/busybox").write_bytes(b"")
>>> busybox_binary(root).relative_to(root).as_posix()
'usr/bin/busybox'
"""

from __future__ import annotations

from pathlib import Path

from ._common import BUSYBOX_PACKAGE, GuestBuildError

__all__ = ["busybox_binary", "in_package", "kernel_module_dir"]


def in_package(root: Path, relative: str, *, directory: bool) -> Path | None:
    """``root/relative``, else ``root/usr/relative``: the first that exists, no link on the way."""
    for candidate in (relative, f"usr/{relative}"):
        path = root
        for part in candidate.split("/"):
            path = path / part
            if path.is_symlink():
                break
        else:
            if path.is_dir() if directory else path.is_file():
                return path
    return None


def kernel_module_dir(kernel_root: Path, release: str) -> Path:
    """The ``lib/modules/RELEASE`` (or ``usr/lib/modules/RELEASE``) directory of an unpacked kernel."""
    found = in_package(kernel_root, f"lib/modules/{release}", directory=True)
    if found is None:
        raise GuestBuildError(f"the kernel package has neither lib/modules/{release} nor usr/lib/modules/{release}")
    return found


def busybox_binary(busybox_root: Path) -> Path:
    """The ``bin/busybox`` (or ``usr/bin/busybox``) file of an unpacked busybox-static."""
    found = in_package(busybox_root, "bin/busybox", directory=False)
    if found is None:
        raise GuestBuildError(f"{BUSYBOX_PACKAGE} has neither bin/busybox nor usr/bin/busybox")
    return found
