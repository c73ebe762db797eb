"""``vmctl-boinc bundle --out DIR``: freeze vmctl-boinc into one self-contained executable.

A BOINC client downloads an app version's files and runs its main program; a volunteer's host
has no Python, let alone vmctl. So the app version's main program is ``DIR/vmctl-boinc``, a
one-file PyInstaller executable carrying the interpreter, vmctl, the adapter and the Python side
of the backends that make sense on a volunteer's host (QEMU, libvirt, VirtualBox; memory for
tests). The hypervisor itself (QEMU, libvirtd, VirtualBox) stays the volunteer's to install.

Why PyInstaller: it is maintained, on PyPI (the ``bundle`` extra), freezes the interpreter we
test with rather than compiling to C (Nuitka: a C compiler and minutes per build, and a
different code path from the one the tests run), and makes one file (cx-Freeze makes a
directory, and a BOINC app version's main program is one file the client downloads). Its
one-file mode unpacks into a temporary directory at each start; the cost is measured in
``benchmarks/bench_bundle.py``.

Backends are found through the entry-point group ``vmctl.backends``, which lives in the vmctl
distribution's metadata; the frozen app has that metadata only because the build copies it
(``--copy-metadata vmctl``). Builds are reproducible: ``SOURCE_DATE_EPOCH`` (the last commit's
time unless set) and ``PYTHONHASHSEED=0`` are fixed for the freezer.

The glibc baseline is the build host's (a PyInstaller bundle runs on hosts whose glibc is at
least as new as the one it was built against): building on Debian 12 gives glibc 2.36.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vmctl.errors import VmctlError

__all__ = ["BUNDLED_BACKENDS", "BundleError", "build_bundle"]

log = logging.getLogger("vmctl.boinc")

BUNDLED_BACKENDS = ("vmctl_qemu", "vmctl_libvirt", "vmctl_virtualbox", "vmctl_memory")
"""The backends whose Python side the bundle carries (vSphere and VMware Workstation are not a
volunteer's hypervisors)."""
_THIRD_PARTY = ("qemu.qmp", "inotify_simple", "libvirt", "psutil", "sysv_ipc")
_EXCLUDED = (
    "tkinter",
    "matplotlib",
    "numpy",
    "PIL",
    "pygments",
    "urwid",
    "IPython",
    "pytest",
    "hypothesis",
    "pyVmomi",
    "pyVim",
    "qemu.qmp.qmp_tui",
    "qemu.qmp.qmp_shell",
)
_NAME = "vmctl-boinc"


class BundleError(VmctlError):
    """The bundle could not be built (the freezer is missing or failed)."""


def _source_date_epoch(root: Path) -> str:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        return out.stdout.strip() or "0"
    except (OSError, subprocess.CalledProcessError):
        return "0"


def _freezer_args(entry: Path, work: Path, out: Path, paths: Sequence[Path]) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--name={_NAME}",
        f"--distpath={out}",
        f"--workpath={work / 'build'}",
        f"--specpath={work}",
        "--copy-metadata=vmctl",
        "--collect-submodules=vmctl",
    ]
    for path in paths:
        args.append(f"--paths={path}")
    for backend in BUNDLED_BACKENDS:
        args.append(f"--collect-submodules={backend}")
    for module in _THIRD_PARTY:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            args.append(f"--hidden-import={module}")
    # Notebooks, docs and test tooling, and qemu.qmp's TUI (urwid, pygments, PIL) are not the volunteer's.
    for excluded in _EXCLUDED:
        args.append(f"--exclude-module={excluded}")
    args.append(str(entry))
    return args


def build_bundle(out: Path) -> Path:
    """Build ``out/vmctl-boinc`` from the vmctl this interpreter imports; return its path.

    Raises :class:`BundleError` if PyInstaller (``pip install 'vmctl[bundle]'``) is missing or fails.
    """
    if importlib.util.find_spec("PyInstaller") is None:
        raise BundleError("PyInstaller is not installed: pip install 'vmctl[bundle]'")
    import vmctl

    package = Path(vmctl.__file__).resolve().parent
    root = package.parent
    # The backends live beside vmctl (backends/vmctl_*) in a source tree, or in site-packages.
    paths = [root] + ([root / "backends"] if (root / "backends").is_dir() else [])
    entry = package / "boinc" / "_frozen_entry.py"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SOURCE_DATE_EPOCH": _source_date_epoch(root),
        "PYTHONHASHSEED": "0",
        "LC_ALL": "C.UTF-8",
    }
    with tempfile.TemporaryDirectory(prefix="vmctl-bundle-") as tmp:
        args = _freezer_args(entry, Path(tmp), out, paths)
        log.info("freezing %s into %s", entry, out / _NAME)
        done = subprocess.run(args, env=env, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BundleError(f"PyInstaller failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    target = out / _NAME
    if not target.is_file():
        raise BundleError(f"PyInstaller wrote no {target}")
    log.info("wrote %s (%.1f MiB)", target, target.stat().st_size / 2**20)
    return target
