"""Running the host tools the build needs (apt, dpkg, cpio, mke2fs, qemu-img), with clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ._common import GuestBuildError, log

# Debian package to install for each tool the build runs.
_TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "cpio": "cpio",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
}
_EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        for d in _EXTRA_TOOL_DIRS:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        pkg = _TOOL_PACKAGES.get(name, name)
        raise GuestBuildError(
            f"building the test guest needs the tool {name!r}, which was not found: "
            f"install it with `apt-get install {pkg}`"
        )
    return found


def _run(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    cmd = [_tool(argv[0]), *argv[1:]]
    env = dict(os.environ, LANG="C", LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildError(f"{what}: {argv[0]} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise GuestBuildError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise GuestBuildError(f"{what}: `{' '.join(argv)}` exited with status {proc.returncode}: {err[-2000:]}")
    return proc


def _apt_options() -> list[str]:
    # As root, apt drops to the _apt user for downloads, which cannot write to our temp dir
    # (it falls back with a warning); say so up front.
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
