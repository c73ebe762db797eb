"""A real VM through its whole lifecycle on the embedded QEMU backend, each step timed.

Run it with ``python -m vmctl.demo`` (``--accel kvm`` where KVM works; TCG is the default
because it works everywhere). It builds the test guest once (cached), then drives one VM
through every verb and prints what each took.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vmctl
from vmctl.backend.ports import free_port
from vmctl.progress import reporting
from vmctl.testguest import TestGuest, ensure_test_guest


def _wait_console(log: Path, pattern: str, timeout: float, after: int = 0) -> str:
    """Wait until ``pattern`` appears in the console log after byte ``after``."""
    regex = re.compile(pattern.encode())
    deadline = time.monotonic() + timeout
    while True:
        data = log.read_bytes()[after:] if log.exists() else b""
        match = regex.search(data)
        if match:
            return match.group(0).decode()
        if time.monotonic() > deadline:
            raise vmctl.OperationTimeout(f"console line {pattern!r}", timeout)
        time.sleep(0.05)


def _size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _tail(log: Path, max_bytes: int = 600) -> str:
    """The end of the guest's console log, to show why a step failed."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, _size(log) - max_bytes))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _echo(port: int, text: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(text)
        return s.recv(len(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmctl.demo", description=__doc__)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--boot-timeout", type=float, default=120)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vmctl-demo-"))
    state_dir = args.state_dir or work / "state"
    rows: list[tuple[str, float, str]] = []

    def step(label: str, action: Callable[[], Any], show: Callable[[Any], str] | None = None) -> Any:
        started = time.monotonic()
        result = action()
        took = time.monotonic() - started
        detail = show(result) if show else ""
        rows.append((label, took, detail))
        print(f"{label:<34} {took * 1000:9.1f} ms  {detail}", flush=True)
        return result

    def build_guest() -> TestGuest:
        with reporting(None, "building the test guest") as report:
            return ensure_test_guest(progress=report)

    guest = step("build or reuse the test guest", build_guest, lambda g: str(g.disk.parent))
    hv = vmctl.connect("qemu", state_dir=state_dir, accel=args.accel)
    share = work / "share"
    share.mkdir()
    console = work / "console.log"
    port = free_port()
    spec = vmctl.MachineSpec(
        name="vmctl-demo",
        disk=guest.disk,
        kernel=guest.kernel,
        initrd=guest.initrd,
        cmdline=guest.cmdline + " vmctl.share=job",
        memory_mib=256,
        network=vmctl.Network(port_forwards=[vmctl.PortForward(host_port=port, guest_port=22)]),
        shared_dirs={"job": share},
        serial_log=console,
    )
    (share / "run.sh").write_text("echo hello from the guest > hello.txt && share put job hello.txt\n")
    with hv:
        for old in hv.machines():
            if old.name == spec.name:
                old.destroy()
        vm = step("create (overlay on the base)", lambda: hv.create(spec), lambda m: str(m.state))
        try:
            step("start", vm.start, lambda _: f"pid {vm.pid}")
            step(
                "  guest booted (console READY)", lambda: _wait_console(console, "VMCTL-GUEST READY", args.boot_timeout)
            )
            step("  guest ran the job in the share", lambda: _wait_console(console, r"RUN job exit=\d+", 30))
            print(f"{'':<34} {'':>12}  share now holds: {(share / 'hello.txt').read_text().strip()!r}")
            step("  guest got its address (DHCP)", lambda: _wait_console(console, r"DHCP ip=\S+", 30))
            step("  port forward 127.0.0.1 -> guest", lambda: _echo(port, b"ping"), lambda r: f"echoed {r!r}")
            step("pause", vm.pause, lambda _: str(vm.state))
            step("resume", vm.resume, lambda _: str(vm.state))
            step("usage", vm.usage, lambda u: f"cpu {u.cpu_seconds:.2f} s, rss {u.memory_bytes >> 20} MiB")
            step(
                "snapshot 'booted' (with memory)", lambda: vm.snapshot("booted"), lambda s: f"has_memory={s.has_memory}"
            )
            step("revert to 'booted'", lambda: vm.revert("booted"), lambda _: str(vm.state))
            step("suspend (state to disk)", vm.suspend, lambda _: f"{vm.state}, pid {vm.pid}")
            step("start (restore saved state)", vm.start, lambda _: str(vm.state))
            mark = _size(console)
            step("network link down", lambda: vm.set_network(False))
            step("  guest saw LINK down", lambda: _wait_console(console, "LINK down", 10, mark))
            step("network link up", lambda: vm.set_network(True))
            mark = _size(console)
            step("restart (graceful reboot)", lambda: vm.restart(hard=False), lambda ok: f"graceful={ok}")
            step("  guest booted again", lambda: _wait_console(console, "VMCTL-GUEST READY", args.boot_timeout, mark))
            mark = _size(console)
            step("restart (hard reset)", lambda: vm.restart(hard=True), lambda ok: f"graceful={ok}")
            step("  guest booted again", lambda: _wait_console(console, "VMCTL-GUEST READY", args.boot_timeout, mark))
            step("stop (ACPI, 60 s deadline)", lambda: vm.stop(timeout=60), lambda ok: f"graceful={ok}, {vm.state}")
            step("snapshots", vm.snapshots, lambda snaps: ", ".join(s.name for s in snaps))
            step("delete snapshot 'booted'", lambda: vm.delete_snapshot("booted"))
            step("destroy", vm.destroy)
        except BaseException:
            print(
                f"failed; destroying {vm.name} (the guest's console ended: {_tail(console)!r}; "
                f"its console log is kept in {work})",
                file=sys.stderr,
            )
            vm.destroy()
            raise
        left = [p.name for p in Path(state_dir).iterdir() if not p.name.startswith(".")]
        print(f"left in the state directory: {left or 'nothing'}; base image untouched: {guest.disk}")
    print(f"total {sum(r[1] for r in rows):.1f} s")
    shutil.rmtree(work)  # the console log, the share and (without --state-dir) the machine's state
    return 0


if __name__ == "__main__":
    sys.exit(main())
