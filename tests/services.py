"""Starting the system services the tests need, without a shell and without systemd.

Run as a script (``python tests/services.py libvirtd``) from ``.ci/run``, or call the functions
from test fixtures. Each function is idempotent: a service that already answers is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["LIBVIRTD_PIDFILE", "ServiceError", "ensure_libvirtd", "libvirtd_pid", "restart_libvirtd", "stop_libvirtd"]

LIBVIRT_DIRS = ("/var/run/libvirt", "/var/log/libvirt", "/var/lib/libvirt/images")
LIBVIRTD_PIDFILE = Path("/var/run/libvirtd.pid")
LIBVIRTD_SOCKET = Path("/var/run/libvirt/libvirt-sock")
VIRTLOGD_PIDFILE = Path("/var/run/virtlogd.pid")


class ServiceError(RuntimeError):
    """A service could not be started; the message says what to install or look at."""


def _pid_from(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def libvirtd_pid() -> int | None:
    """The pid of the running libvirtd, from its pid file, or None."""
    return _pid_from(LIBVIRTD_PIDFILE)


def _answers(uri: str = "qemu:///system") -> bool:
    try:
        import libvirt
    except ImportError:
        # Without the Python binding, a connectable socket is the best sign we have.
        return LIBVIRTD_SOCKET.exists() and libvirtd_pid() is not None
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _start_daemon(binary: str) -> None:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        raise ServiceError(f"{binary} not found: apt-get install libvirt-daemon-system")
    # "-d" daemonises: the call returns once the daemon has forked and written its pid file.
    proc = subprocess.run(
        [path, "-d"], capture_output=True, text=True, timeout=60, env={**os.environ, "LANG": "C"}, check=False
    )
    if proc.returncode != 0:
        raise ServiceError(f"{binary} -d failed ({proc.returncode}): {proc.stderr.strip()}")


def ensure_libvirtd(timeout: float = 30.0) -> int:
    """Make sure virtlogd and libvirtd run and ``qemu:///system`` answers; return libvirtd's pid.

    Needs root and Debian's ``libvirt-daemon-system`` (which also creates the libvirt-qemu user).
    """
    if os.geteuid() != 0:
        raise ServiceError("starting libvirtd needs root")
    for d in LIBVIRT_DIRS:
        Path(d).mkdir(parents=True, exist_ok=True)
    if _pid_from(VIRTLOGD_PIDFILE) is None:
        _start_daemon("virtlogd")
    if libvirtd_pid() is None or not _answers():
        if libvirtd_pid() is None:
            _start_daemon("libvirtd")
        deadline = time.monotonic() + timeout
        while not _answers():
            if time.monotonic() > deadline:
                raise ServiceError(f"libvirtd did not answer on qemu:///system within {timeout} s")
            time.sleep(0.1)
    pid = libvirtd_pid()
    if pid is None:
        raise ServiceError(f"libvirtd answers but {LIBVIRTD_PIDFILE} names no live process")
    return pid


def stop_libvirtd(timeout: float = 30.0) -> None:
    """Stop libvirtd by its pid (SIGTERM); running guests keep running, as with systemd."""
    pid = libvirtd_pid()
    if pid is None:
        return
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while _pid_from(LIBVIRTD_PIDFILE) == pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            raise ServiceError(f"libvirtd (pid {pid}) did not exit within {timeout} s")
        time.sleep(0.05)


def restart_libvirtd(timeout: float = 30.0) -> int:
    """Stop libvirtd and start it again; return the new pid."""
    stop_libvirtd(timeout)
    return ensure_libvirtd(timeout)


def _main(argv: list[str]) -> int:
    services = {"libvirtd": ensure_libvirtd}
    names = argv or list(services)
    for name in names:
        if name not in services:
            print(f"unknown service {name!r}; known: {', '.join(services)}", file=sys.stderr)
            return 2
        try:
            result = services[name]()
        except ServiceError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        print(f"{name}: running (pid {result})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
