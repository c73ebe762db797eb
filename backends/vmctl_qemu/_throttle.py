"""The CPU cap of a QEMU machine (``set_cpu_limit``): a percentage of one host CPU per virtual CPU.

Two ways, the first that works:

- **cgroup v2** ``cpu.max`` (quota = percent x period x CPUs), where QEMU's cgroup is delegated to
  this user with the ``cpu`` controller: QEMU alone in its cgroup (a ``systemd-run --scope``, or a
  cgroup made for it earlier) is limited in place; otherwise a child cgroup ``vmctl-<machine>`` is
  made for it, which needs ``+cpu`` in its cgroup's ``cgroup.subtree_control`` (the kernel refuses
  that while the cgroup holds other processes: then the second way).
- **duty cycling**, as the BOINC client throttles apps: a small detached process
  (this module run as a script) lets QEMU run for ``percent`` % of every 100 ms and stops it
  (SIGSTOP) for the rest, until QEMU ends. The guest's runstate is untouched (a QMP client waits at
  most one stopped slice for an answer). SIGUSR1 holds the cycle (QEMU runs freely: saving the
  state to disk at full speed), SIGUSR2 resumes it; SIGTERM ends it, leaving QEMU running.

The limit is kept in the machine's record and applied again at every start. While limited,
everything QEMU does runs at that rate, as under VirtualBox's ``cpuexecutioncap``.

>>> cpu_max(25, 2)
'50000 100000'
>>> cpu_max(100, 1)
'max 100000'
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

__all__ = ["DUTY_PERIOD", "THROTTLE_FILE", "apply_cpu_limit", "cpu_max", "held", "main"]

log = logging.getLogger("vmctl.qemu")

DUTY_PERIOD = 0.1
"""Seconds of one run + stop cycle of duty cycling."""
CGROUP_PERIOD_US = 100_000
THROTTLE_FILE = "throttle.json"
"""In the machine's directory: the duty-cycling process (pid and start time) or the cgroup used."""
CGROUP_PREFIX = "vmctl-"
FROZEN_THROTTLE = "vmctl-qemu-throttle"
#: run as a script, as the keeper is (the frozen vmctl-boinc runs it as ``vmctl-boinc vmctl-qemu-throttle``)
THROTTLE_SCRIPT = FROZEN_THROTTLE if getattr(sys, "frozen", False) else str(Path(__file__).resolve())


def cpu_max(percent: int, cpus: int) -> str:
    """cgroup v2 ``cpu.max`` for ``percent`` of one CPU per virtual CPU."""
    if percent >= 100:
        return f"max {CGROUP_PERIOD_US}"
    return f"{max(1000, CGROUP_PERIOD_US * percent * cpus // 100)} {CGROUP_PERIOD_US}"


# -- cgroup v2 -----------------------------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    return Path(left.split()[4])
    except OSError:
        pass
    return None


def _cgroup_of(pid: int, mount: Path) -> Path | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = mount / line[3:].strip().lstrip("/")
                    return path if path.is_dir() else None
    except OSError:
        pass
    return None


def _procs(cgroup: Path) -> set[int]:
    return {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}


def _cgroup_limit(proc: psutil.Process, name: str, percent: int, cpus: int, mount: Path | None) -> Path | None:
    """Limit QEMU by cgroup v2 ``cpu.max``; the cgroup, or None where that is not possible."""
    if mount is None:
        return None
    current = _cgroup_of(proc.pid, mount)
    if current is None or current == mount:
        return None
    try:
        if current.name.startswith(CGROUP_PREFIX) or _procs(current) == {proc.pid}:
            target = current
        else:
            if "cpu" not in (current / "cgroup.controllers").read_text().split():
                return None
            target = current / f"{CGROUP_PREFIX}{name}"
            target.mkdir(exist_ok=True)
            control = current / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
            (target / "cgroup.procs").write_text(str(proc.pid))
        (target / "cpu.max").write_text(cpu_max(percent, cpus))
    except OSError as exc:
        log.debug("cgroup v2 CPU limit not possible for %s (%s): duty cycling instead", name, exc)
        return None
    return target


# -- duty cycling ----------------------------------------------------------------------------------


def _read_throttle(vm_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((vm_dir / THROTTLE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_throttle(vm_dir: Path, data: dict[str, Any]) -> None:
    tmp = vm_dir / f".{THROTTLE_FILE}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, vm_dir / THROTTLE_FILE)


def _cycler(vm_dir: Path) -> psutil.Process | None:
    """The machine's duty-cycling process, if it still runs (the same process: its start time)."""
    data = _read_throttle(vm_dir)
    pid, started = data.get("cycler_pid"), data.get("cycler_started")
    if not isinstance(pid, int) or not isinstance(started, (int, float)):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _end_cycler(vm_dir: Path, qemu: psutil.Process | None) -> None:
    proc = _cycler(vm_dir)
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.wait(5)
    if qemu is not None:  # never leave QEMU stopped, whatever happened to the cycler
        with contextlib.suppress(psutil.Error):
            qemu.resume()


def apply_cpu_limit(vm_dir: Path, name: str, qemu: psutil.Process | None, percent: int, cpus: int) -> str:
    """Cap the running QEMU ``qemu`` (None: not running, nothing to do now) at ``percent``;
    return how: ``"cgroup"``, ``"duty"`` or ``"none"`` (100 %, or not running)."""
    earlier = _read_throttle(vm_dir)
    _end_cycler(vm_dir, qemu)
    cgroup = earlier.get("cgroup")
    if qemu is None:
        return "none"
    if percent >= 100:
        if isinstance(cgroup, str):
            with contextlib.suppress(OSError):
                (Path(cgroup) / "cpu.max").write_text(cpu_max(100, cpus))
        _write_throttle(vm_dir, {})
        return "none"
    target = _cgroup_limit(qemu, name, percent, cpus, _cgroup2_mount())
    if target is not None:
        _write_throttle(vm_dir, {"cgroup": str(target)})
        return "cgroup"
    from ._launcher import reap_when_done

    cycler = subprocess.Popen(
        [
            sys.executable,
            THROTTLE_SCRIPT,
            "--pid",
            str(qemu.pid),
            "--started",
            repr(qemu.create_time()),
            "--percent",
            str(percent),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    _await_ready(cycler)
    _write_throttle(vm_dir, {"cycler_pid": cycler.pid, "cycler_started": psutil.Process(cycler.pid).create_time()})
    reap_when_done(cycler)
    return "duty"


READY = b"cycling\n"
READY_TIMEOUT = 10.0
"""Seconds ``set_cpu_limit`` waits for the duty cycling to be in force (a busy host starts the
cycler's interpreter slowly)."""


def _await_ready(cycler: subprocess.Popen[bytes]) -> None:
    """Return once the cycler says it cycles (or has ended, or after :data:`READY_TIMEOUT`)."""
    assert cycler.stdout is not None
    try:
        ready, _, _ = select.select([cycler.stdout], [], [], READY_TIMEOUT)
        if not ready or cycler.stdout.readline() != READY:
            log.warning("the CPU limit's duty cycling (pid %d) did not report within %.0f s", cycler.pid, READY_TIMEOUT)
    finally:
        cycler.stdout.close()


@contextlib.contextmanager
def held(vm_dir: Path) -> Iterator[None]:
    """QEMU runs unthrottled by duty cycling inside (saving its state, a snapshot)."""
    cycler = _cycler(vm_dir)
    if cycler is None:
        yield
        return
    with contextlib.suppress(psutil.Error):
        cycler.send_signal(signal.SIGUSR1)
    try:
        yield
    finally:
        with contextlib.suppress(psutil.Error):
            cycler.send_signal(signal.SIGUSR2)


def _cycle(pid: int, started: float, percent: int) -> int:
    try:
        qemu = psutil.Process(pid)
        if abs(qemu.create_time() - started) > 0.01:
            return 0
    except psutil.NoSuchProcess:
        return 0
    running = DUTY_PERIOD * max(1, min(percent, 99)) / 100
    stopped = DUTY_PERIOD - running
    flags = {"hold": False, "end": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            flags["hold"] = True
        elif signum == signal.SIGUSR2:
            flags["hold"] = False
        else:
            flags["end"] = True

    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    announced = False
    try:
        while not flags["end"]:
            if not announced:
                announced = True
                qemu.suspend()
                with contextlib.suppress(OSError):  # the caller may have stopped listening
                    os.write(1, READY)
                    os.close(1)
            started_running = time.monotonic()
            qemu.resume()
            time.sleep(running)
            if flags["hold"] or flags["end"]:
                continue
            qemu.suspend()
            # a late wake-up (a busy host) ran QEMU longer: stop it longer, keeping the ratio
            ran = time.monotonic() - started_running
            time.sleep(max(stopped, ran * stopped / running))
    except psutil.NoSuchProcess:
        return 0
    finally:
        with contextlib.suppress(psutil.Error):
            qemu.resume()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmctl-qemu-throttle", description="duty-cycle a QEMU process")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--started", type=float, required=True)
    p.add_argument("--percent", type=int, required=True)
    args = p.parse_args(argv)
    try:
        return _cycle(args.pid, args.started, args.percent)
    except OSError as exc:
        return 1 if exc.errno != errno.ESRCH else 0


if __name__ == "__main__":
    raise SystemExit(main())
