"""One frozen ``vmctl-boinc`` per test session (building it takes about 25 s on 2 cores).

:func:`frozen_vmctl_boinc` runs ``vmctl-boinc bundle --out DIR`` the first time it is called and
returns the same executable afterwards; the directory is removed when the session's interpreter
exits. :func:`no_python_env` is an environment whose PATH holds QEMU but no Python interpreter.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["frozen_vmctl_boinc", "no_python_env"]


@functools.cache
def frozen_vmctl_boinc() -> Path:
    out = Path(tempfile.mkdtemp(prefix="vmctl-test-bundle-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc", "bundle", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    print(f"built the vmctl-boinc bundle in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return out / "vmctl-boinc"


@functools.cache
def _tool_dir() -> Path:
    tools = Path(tempfile.mkdtemp(prefix="vmctl-test-nopy-"))
    atexit.register(shutil.rmtree, tools, ignore_errors=True)
    for tool in ("qemu-system-x86_64", "qemu-img"):
        found = shutil.which(tool)
        if found is not None:
            (tools / tool).symlink_to(found)
    return tools


def no_python_env(**extra: str) -> dict[str, str]:
    """A minimal environment whose PATH has QEMU's binaries and no Python."""
    tools = _tool_dir()
    assert shutil.which("python3", path=str(tools)) is None
    return {"PATH": str(tools), "LC_ALL": "C.UTF-8", "HOME": str(tools), **extra}
