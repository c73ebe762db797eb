"""Running external tools (qemu-img, VBoxManage, vmrun, ...) the one safe way.

argv lists only (never a shell), ``LANG=C``/``LC_ALL=C`` so output can be parsed, a timeout on
every call, and failures raised as :class:`vmctl.BackendError` carrying argv, status and output.
:class:`Background` starts a tool without waiting for it, still with a deadline.

>>> from vmctl.backend.tools import run_tool
>>> run_tool(["echo", "hi"], timeout=5).stdout
'hi\\n'
>>> run_tool(["cat"], input=b"raw", text=False, timeout=5).stdout
b'raw'
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

from vmctl.errors import BackendError, OperationTimeout, os_error_code

__all__ = ["Background", "c_locale_env", "run_tool"]

log = logging.getLogger("vmctl.tools")


def c_locale_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the C locale, plus ``extra``."""
    env = dict(os.environ)
    env.update({"LANG": "C", "LC_ALL": "C", "LANGUAGE": "C"})
    if extra:
        env.update(extra)
    return env


@overload
def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = ...,
    input: str | None = ...,
    env: Mapping[str, str] | None = ...,
    cwd: Path | None = ...,
    text: Literal[True] = ...,
) -> subprocess.CompletedProcess[str]: ...


@overload
def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = ...,
    input: bytes | None = ...,
    env: Mapping[str, str] | None = ...,
    cwd: Path | None = ...,
    text: Literal[False],
) -> subprocess.CompletedProcess[bytes]: ...


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process (text mode unless ``text=False``).

    ``env`` is added to this process's environment. Raises :class:`OperationTimeout` when the
    tool outlives ``timeout`` (it is killed), and :class:`BackendError` when it cannot be run or,
    with ``check``, exits non-zero.
    """
    args = [os.fspath(a) for a in argv]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            env=c_locale_env(env),
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
            errors="replace" if text else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise OperationTimeout(" ".join(args[:3]), timeout) from exc
    except OSError as exc:
        raise _not_run(args, exc) from exc
    log.debug("%s -> %d in %.3f s", args[:3], proc.returncode, time.monotonic() - started)
    if check and proc.returncode != 0:
        stdout, stderr = _text(proc.stdout), _text(proc.stderr)
        detail = (stderr or stdout).strip().splitlines()
        raise BackendError(
            f"{os.path.basename(args[0])} failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}",
            command=args,
            status=proc.returncode,
            stdout=stdout,
            stderr=stderr,
        )
    return proc


def _not_run(args: list[str], exc: OSError) -> BackendError:
    return BackendError(
        f"cannot run {args[0]}: {exc}",
        command=args,
        code=os_error_code(exc),
        native=errno.errorcode.get(exc.errno or 0),
    )


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


class Background:
    """Tools started without waiting for them, each killed if it outlives its deadline.

    For verbs that block until a guest acts (``vmrun stop soft``) while the caller watches the
    machine's state itself. :meth:`close` kills those still running.

    >>> done = threading.Event()
    >>> tools = Background()
    >>> tools.spawn(["true"], timeout=5, on_exit=lambda proc: done.set())
    >>> done.wait(5)
    True
    """

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float,
        on_exit: Callable[[subprocess.CompletedProcess[str]], None] | None = None,
    ) -> None:
        """Start ``argv``; ``on_exit`` gets its result unless it was killed at the deadline.

        Raises :class:`BackendError` when it cannot be started.
        """
        args = [os.fspath(a) for a in argv]
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=c_locale_env(),
            )
        except OSError as exc:
            raise _not_run(args, exc) from exc
        with self._lock:
            self._running.add(proc)
        name = f"{os.path.basename(args[0])}-reaper"
        threading.Thread(target=self._reap, args=(proc, args, timeout, on_exit), daemon=True, name=name).start()

    def _reap(
        self,
        proc: subprocess.Popen[str],
        args: list[str],
        timeout: float,
        on_exit: Callable[[subprocess.CompletedProcess[str]], None] | None,
    ) -> None:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            log.warning("%s outlived its %g s deadline and was killed", " ".join(args[:5]), timeout)
        finally:
            with self._lock:
                self._running.discard(proc)
        if proc.returncode >= 0 and on_exit is not None:
            on_exit(subprocess.CompletedProcess(args, proc.returncode, out, err))

    def close(self) -> None:
        """Kill the tools still running."""
        with self._lock:
            procs = list(self._running)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
