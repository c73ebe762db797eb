"""Running external tools (qemu-img, VBoxManage, vmrun, ...) the one safe way.

argv lists only (never a shell), ``LANG=C``/``LC_ALL=C`` so output can be parsed, a timeout on
every call, and failures raised as :class:`vmctl.BackendError` carrying argv, status and output.

>>> from vmctl.tools import run_tool
>>> run_tool(["echo", "hi"], timeout=5).stdout
'hi\\n'
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence

from vmctl.errors import BackendError, OperationTimeout, os_error_code

__all__ = ["c_locale_env", "run_tool"]

log = logging.getLogger("vmctl.tools")


def c_locale_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LANG": "C", "LC_ALL": "C", "LANGUAGE": "C"})
    if extra:
        env.update(extra)
    return env


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the completed process (text mode).

    Raises :class:`OperationTimeout` when the tool outlives ``timeout`` (it is killed), and
    :class:`BackendError` when it cannot be run or, with ``check``, exits non-zero.
    """
    args = [str(a) for a in argv]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=c_locale_env(env),
            stdin=None if input is not None else subprocess.DEVNULL,
            errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        raise OperationTimeout(" ".join(args[:3]), timeout) from exc
    except OSError as exc:
        raise BackendError(
            f"cannot run {args[0]}: {exc}",
            command=args,
            code=os_error_code(exc),
            native=errno.errorcode.get(exc.errno or 0),
        ) from exc
    log.debug("%s -> %d in %.3f s", args[:3], proc.returncode, time.monotonic() - started)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BackendError(
            f"{os.path.basename(args[0])} failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}",
            command=args,
            status=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    return proc
