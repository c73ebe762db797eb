"""The guest's network through passt, so that the guest cannot reach the host's loopback.

QEMU's built-in user-mode network (slirp) maps the gateway, 10.0.2.2, to the host's 127.0.0.1:
a guest reaches every service that listens on the host's loopback only (BOINC's GUI RPC port,
other VMs' forwarded ports, local databases). passt is a user-mode network too, but with
``--no-map-gw`` the gateway is just the gateway. QEMU and passt share a connected socket pair
(``-netdev stream,addr.type=fd``): passt serves exactly that socket and quits when it closes, so a
passt never outlives its QEMU, whoever dies first and however (a kill of the caller, a crash of
QEMU, a failed start).

Without passt, QEMU's user network runs with ``restrict=on``: port forwards still work, but the
guest reaches neither the host nor anything else.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from typing import IO

import psutil

from vmctl.errors import BackendError, ErrorCode, OperationTimeout
from vmctl.types import Network

__all__ = ["find_passt", "passt_argv", "start_passt"]


def passt_argv(binary: str, fd: int, network: Network) -> list[str]:
    """passt's command line: serve socket ``fd``, gateway not mapped, forwards on 127.0.0.1."""
    argv = [binary, "--foreground", "--quiet", "--fd", str(fd), "--no-map-gw"]
    for protocol, flag in (("tcp", "-t"), ("udp", "-u")):
        ports = [f"{pf.host_port}:{pf.guest_port}" for pf in network.port_forwards if pf.protocol == protocol]
        argv += [flag, "127.0.0.1/" + ",".join(ports) if ports else "none"]
    return argv


def find_passt(binary: str | None) -> str | None:
    """The passt program to use, or None where it is not installed (or turned off with "")."""
    if not binary:
        return None
    return shutil.which(binary)


def start_passt(
    binary: str, network: Network, log: IO[bytes], timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start passt for one QEMU run and wait until it listens on every forwarded port; returns it
    and QEMU's end of their socket pair (the caller hands that end to QEMU and closes its own
    copy: from then on QEMU's exit is passt's).

    A forwarded port that another process holds is a :class:`BackendError` with ``native``
    ``EADDRINUSE`` (passt exits; nothing is left behind)."""
    qemu_end, passt_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = passt_argv(binary, passt_end.fileno(), network)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=[passt_end.fileno()],
            start_new_session=True,
        )
    except BaseException:
        qemu_end.close()
        raise
    finally:
        passt_end.close()
    try:
        _wait_listening(proc, network, argv, timeout)
    except BaseException:
        qemu_end.close()  # passt quits when its peer is gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        raise
    return proc, qemu_end


def _wait_listening(proc: subprocess.Popen[bytes], network: Network, argv: list[str], timeout: float) -> None:
    wanted = {(pf.protocol, pf.host_port) for pf in network.port_forwards}
    deadline = time.monotonic() + timeout
    pause = 0.005
    while wanted:
        if proc.poll() is not None:
            ports = ", ".join(f"127.0.0.1:{port}/{proto}" for proto, port in sorted(wanted))
            raise BackendError(
                f"passt could not take the forwarded port(s) {ports}: in use by another process",
                command=argv,
                status=proc.returncode,
                code=ErrorCode.EXISTS,
                native="EADDRINUSE",
            )
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(proc.pid).net_connections(kind="inet4"):
                proto = "tcp" if conn.type == socket.SOCK_STREAM else "udp"
                if conn.laddr and (proto == "udp" or conn.status == psutil.CONN_LISTEN):
                    wanted.discard((proto, conn.laddr.port))
        if not wanted:
            return
        if time.monotonic() > deadline:
            proc.kill()
            raise OperationTimeout("passt to listen on the forwarded ports", timeout)
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
