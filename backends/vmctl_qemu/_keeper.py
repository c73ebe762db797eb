"""The keeper: a tiny parent process for one QEMU run.

``python .../vmctl_qemu/_keeper.py VMDIR RUN_ID [--pass-fd FD] [--log-cap BYTES] [--log PATH]...
-- QEMU ARGV...`` starts QEMU (handing it descriptor FD, its network socket) (cwd = VMDIR), records
its pid and start time in ``run.json``, waits for it, and records its exit status in
``exit.json``. While QEMU runs it keeps ``qemu.log`` and each ``--log`` (the serial console)
under ``--log-cap`` bytes. Without a parent that outlives the vmctl process that started the VM, nobody could
tell a guest that powered itself off (exit 0) from a QEMU that died (a signal or error status).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """vmctl.store.atomic_write without importing vmctl: the keeper starts before every QEMU
    and stays for its whole run, so it imports as little as it can."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


USAGE = "usage: _keeper.py VMDIR RUN_ID [--pass-fd FD] [--log-cap BYTES] [--log PATH]... -- QEMU..."
LOG_CHECK_INTERVAL = 0.1


def trim_log(path: Path, cap: int) -> None:
    """Keep a log QEMU appends to (O_APPEND) under ``cap`` bytes: past it, only its newest half
    stays, after a line saying how much went. Never follows a link; a log that is not a regular
    file is left alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= cap:
            return
        keep = cap // 2
        tail = os.pread(fd, keep, st.st_size - keep)
        os.ftruncate(fd, 0)
        note = f"[vmctl: {st.st_size - len(tail)} bytes of older output dropped (log cap {cap} bytes)]\n"
        os.write(fd, note.encode() + tail)
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    pass_fds: list[int] = []
    logs: list[Path] = []
    cap = 0
    while len(argv) > 3 and argv[2] in ("--pass-fd", "--log-cap", "--log"):
        flag, value = argv[2:4]
        del argv[2:4]
        if flag == "--pass-fd":
            pass_fds.append(int(value))
        elif flag == "--log-cap":
            cap = int(value)
        else:
            logs.append(Path(value))
    vmdir, run_id, sep, *qemu = argv
    if sep != "--" or not qemu:
        print(USAGE, file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    directory = Path(vmdir)
    with open(directory / "qemu.log", "ab") as err:
        proc = subprocess.Popen(
            qemu, cwd=directory, stdin=subprocess.DEVNULL, stdout=err, stderr=err, pass_fds=pass_fds
        )
    for fd in pass_fds:  # QEMU's alone now: its exit closes the socket, and passt quits
        os.close(fd)
    import psutil

    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    record = {"run_id": run_id, "keeper_pid": os.getpid(), "qemu_pid": proc.pid, "qemu_created": created}
    atomic_write(directory / "run.json", json.dumps(record).encode())
    logs.append(directory / "qemu.log")
    if cap:
        # woken by QEMU's exit at once, else every LOG_CHECK_INTERVAL (Popen.wait(timeout) would poll)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        while proc.poll() is None:
            signal.sigtimedwait({signal.SIGCHLD}, LOG_CHECK_INTERVAL)
            for path in logs:
                trim_log(path, cap)
    status = proc.wait()
    atomic_write(
        directory / "exit.json",
        json.dumps({"run_id": run_id, "status": status, "ended": time.time()}).encode(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
