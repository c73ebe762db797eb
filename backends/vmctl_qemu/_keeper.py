"""The keeper: a tiny parent process for one QEMU run.

``python .../vmctl_qemu/_keeper.py VMDIR RUN_ID [--pass-fd FD] -- QEMU ARGV...`` starts QEMU
(handing it descriptor FD, its network socket) (cwd = VMDIR), records
its pid and start time in ``run.json``, waits for it, and records its exit status in
``exit.json``. Without a parent that outlives the vmctl process that started the VM, nobody could
tell a guest that powered itself off (exit 0) from a QEMU that died (a signal or error status).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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


def main(argv: list[str]) -> int:
    pass_fds: list[int] = []
    if len(argv) > 3 and argv[2] == "--pass-fd":
        pass_fds.append(int(argv[3]))
        del argv[2:4]
    vmdir, run_id, sep, *qemu = argv
    if sep != "--" or not qemu:
        print("usage: _keeper.py VMDIR RUN_ID [--pass-fd FD] -- QEMU...", file=sys.stderr)
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
    status = proc.wait()
    atomic_write(
        directory / "exit.json",
        json.dumps({"run_id": run_id, "status": status, "ended": time.time()}).encode(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
