"""Starting and ending a machine's QEMU process, and finding it again from another process.

QEMU runs under a small keeper (``_keeper.py``) in its own session, so that it outlives the
process that started it. The keeper writes ``run.json`` (QEMU's pid and start time, tagged with
the run id the record names) and, when QEMU ends, ``exit.json`` (its exit status). Every function
here that changes something expects its caller to hold the machine's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from vmctl.backend.aio import loop as event_loop
from vmctl.backend.usage import pid_alive
from vmctl.errors import BackendError, OperationTimeout

from . import _qmp
from ._command import QMP_SOCKET, STATE_SOCKET, qemu_argv
from ._keeper import MOVING
from ._passt import find_passt, start_passt
from ._screenshot import display_argv

if TYPE_CHECKING:
    from ._machine import QemuMachine

log = logging.getLogger("vmctl.qemu")

#: The word a frozen vmctl (``vmctl-boinc bundle``), which is its own interpreter, takes as
#: "run the keeper"; a path would name a file in the bundle's per-run unpacking directory.
FROZEN_KEEPER = "vmctl-qemu-keeper"
#: run as a script (not with -m): importing the vmctl_qemu package would add 40 ms to every start
KEEPER_SCRIPT = (
    FROZEN_KEEPER if getattr(sys, "frozen", False) else str(Path(__file__).resolve().with_name("_keeper.py"))
)
#: how the keeper is run: without ``site`` (-S: no site-packages, nothing imported that the
#: keeper does not use; -I: no PYTHON* variables, no user site), imported from the script's
#: directory (its cached bytecode: compiling the script at every start would cost the keeper
#: 0.9 MiB more of its own memory); the script's path stays on its command line (sys.argv[1])
KEEPER_PYTHON = (
    [sys.executable]
    if getattr(sys, "frozen", False)
    else [
        sys.executable,
        "-S",
        "-I",
        "-c",
        "import sys; sys.path[0:0] = [sys.argv[1].rpartition('/')[0]]; import _keeper; "
        "sys.exit(_keeper.main(sys.argv[2:]))",
    ]
)
SAVED_STATE = "state.bin"
PARTIAL_STATE = SAVED_STATE + ".tmp"
#: a paused machine's disk byte counts, kept by the first reader after the pause (``_usage``)
BLOCK_IO = "blockio.json"


def read_json(directory: Path, filename: str) -> dict[str, Any] | None:
    """A JSON file of the machine's directory, or None if it is missing or half-written."""
    try:
        data: dict[str, Any] = json.loads((directory / filename).read_bytes())
        return data
    except (FileNotFoundError, ValueError):
        return None


def process_of(directory: Path, rec: dict[str, Any], run: dict[str, Any] | None = None) -> psutil.Process | None:
    """The live QEMU process of the run the record names, or None; ``run``: the keeper's
    ``run.json`` if the caller has just read it (else it is read here)."""
    if run is None:
        run = read_json(directory, "run.json")
    if not run or run.get("run_id") != rec.get("run_id"):
        return None
    try:
        proc = psutil.Process(int(run["qemu_pid"]))
        if proc.create_time() != run.get("qemu_created") or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def still_running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_record(directory: Path, run_id: str | None, grace: float = 3.0) -> dict[str, Any] | None:
    """The keeper's exit record of ``run_id``; waits briefly while the keeper is writing it."""
    deadline = time.monotonic() + grace
    while True:
        ended = read_json(directory, "exit.json")
        if ended and ended.get("run_id") == run_id:
            return ended
        run = read_json(directory, "run.json")
        keeper_alive = bool(run and run.get("run_id") == run_id and pid_alive(run.get("keeper_pid")))
        if not keeper_alive or time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def orphan_keeper(directory: Path, run_id: str | None) -> psutil.Process | None:
    """A keeper of ``run_id`` whose launcher died before it recorded QEMU's pid."""
    if not run_id:
        return None
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if KEEPER_SCRIPT in cmd and run_id in cmd and str(directory) in cmd:
            return proc
    return None


def wait_qmp(vm: QemuMachine, deadline: float) -> None:
    """Wait until QEMU answers on its query socket (or the deadline passes)."""
    pauses = _qmp.backoff()
    while time.monotonic() < deadline:
        with contextlib.suppress(BackendError, OperationTimeout):
            vm._query_status(timeout=2)
            return
        time.sleep(next(pauses))


def reap_when_done(proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc`` (a keeper, passt) when it ends, on vmctl's event-loop thread: one thread
    for every process this one starts, not one each, so that one process can start many VMs."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel without pidfds
        threading.Thread(target=proc.wait, name=f"vmctl-reap-{proc.pid}", daemon=True).start()
        return
    ev = event_loop()

    def reap() -> None:
        ev.remove_reader(pidfd)
        os.close(pidfd)
        proc.poll()

    ev.call_soon_threadsafe(ev.add_reader, pidfd, reap)


def launch(
    vm: QemuMachine, rec: dict[str, Any], timeout: float, *, incoming: bool = False, loadvm: str | None = None
) -> None:
    """Start QEMU for the machine under a keeper and wait until its monitor answers."""
    hv = vm.hypervisor
    for stale in (QMP_SOCKET, STATE_SOCKET, "run.json", "exit.json", MOVING, BLOCK_IO):
        with contextlib.suppress(FileNotFoundError):
            (vm.dir / stale).unlink()
    passt_binary = find_passt(hv.passt) if vm.spec.network is not None else None
    if vm.spec.network is not None and passt_binary is None:
        log.info("%s: no passt: QEMU's user network runs restricted (forwards only, no way out)", vm.name)
    with contextlib.ExitStack() as stack:
        net_fd = None
        if passt_binary is not None and vm.spec.network is not None:
            with open(vm.dir / "qemu.log", "ab") as passt_log:
                passt, qemu_end = start_passt(passt_binary, vm.spec.network, passt_log)
            reap_when_done(passt)
            stack.callback(qemu_end.close)
            net_fd = qemu_end.fileno()
        keeper, argv, run_id, previous = _start_keeper(vm, rec, incoming, loadvm, net_fd)
    reap_when_done(keeper)
    _wait_started(vm, keeper, argv, run_id, previous, timeout)


def _start_keeper(
    vm: QemuMachine, rec: dict[str, Any], incoming: bool, loadvm: str | None, net_fd: int | None
) -> tuple[subprocess.Popen[bytes], list[str], str, dict[str, Any]]:
    hv = vm.hypervisor
    argv = qemu_argv(
        vm.spec,
        binary=hv.qemu_binary,
        accel=hv.accel,
        machine_type=hv.machine_type,
        disk=vm._disk(rec),
        disk_format=rec.get("disk_format", "qcow2"),
        serial_log=vm.serial_log,
        incoming=incoming,
        loadvm=loadvm,
        cpu_model=hv.cpu_model,
        net_fd=net_fd,
        extra_disk_formats=rec.get("extra_disk_formats", ()),
        extra=display_argv(rec),
    )
    run_id = uuid.uuid4().hex
    previous = {"status": rec.get("status"), "run_id": rec.get("run_id")}
    # a restore stays "suspended" until the saved state is loaded: if this process dies
    # before that, the saved state is still the machine's state
    vm._update(status="suspended" if incoming else "running", run_id=run_id)
    log.debug("%s: %s", vm.name, argv)
    with open(vm.dir / "qemu.log", "ab") as err:
        err.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id}: {' '.join(argv)}\n".encode())
        err.flush()
        keeper_options = ["--pass-fd", str(net_fd)] if net_fd is not None else []
        if hv.log_max_bytes:
            keeper_options += ["--log-cap", str(hv.log_max_bytes), "--log", str(vm.serial_log)]
        try:
            keeper = subprocess.Popen(
                [*KEEPER_PYTHON, KEEPER_SCRIPT, str(vm.dir), run_id, *keeper_options, "--", *argv],
                cwd=vm.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=[net_fd] if net_fd is not None else [],
                start_new_session=True,  # the VM outlives this process and its terminal
            )
        except BaseException:
            vm._update(**previous)
            raise
    return keeper, argv, run_id, previous


def _wait_started(
    vm: QemuMachine,
    keeper: subprocess.Popen[bytes],
    argv: list[str],
    run_id: str,
    previous: dict[str, Any],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    pauses = _qmp.backoff()
    while True:
        ended = read_json(vm.dir, "exit.json")
        if keeper.poll() is not None or (ended and ended.get("run_id") == run_id):
            vm._update(**previous)
            raise BackendError(
                f"QEMU exited while starting {vm.name!r}: {vm.hypervisor_log(1500).strip()[-1500:]}",
                command=argv,
                stderr=vm.hypervisor_log(),
            )
        run = read_json(vm.dir, "run.json")
        if run and run.get("run_id") == run_id and (vm.dir / STATE_SOCKET).exists():
            with contextlib.suppress(BackendError, OperationTimeout):
                vm._query_status(timeout=2)
                _await_following(vm, run_id, min(deadline, time.monotonic() + 5))
                return
        if time.monotonic() > deadline:
            _kill_run(run)
            vm._update(**previous)
            raise OperationTimeout(f"starting QEMU for {vm.name!r}", timeout)
        time.sleep(next(pauses))


def _await_following(vm: QemuMachine, run_id: str, deadline: float) -> None:
    """QEMU answers: give its keeper until ``deadline`` to report the first run state from its
    event monitor, so that reads right after a start need no QMP round trip."""
    with vm._watch() as watch:
        while True:
            run = read_json(vm.dir, "run.json")
            if not run or run.get("run_id") != run_id or "runstate" in run:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("%s: the keeper does not follow QEMU's events; states are read over QMP", vm.name)
                return
            watch.wait(left)


def _kill_run(run: dict[str, Any] | None) -> None:
    if run:
        with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
            os.kill(int(run["qemu_pid"]), signal.SIGKILL)


def terminate(vm: QemuMachine, timeout: float) -> None:
    """End the QEMU process: QMP quit, then SIGKILL at the deadline; then wait for its keeper
    to record the exit and end too, so that no process of the machine outlives the verb."""
    proc = process_of(vm.dir, vm._record())
    if proc is None:
        return
    run = read_json(vm.dir, "run.json") or {}
    _end_qemu(vm, proc, timeout)
    deadline = time.monotonic() + 10
    while pid_alive(run.get("keeper_pid")) and time.monotonic() < deadline:
        time.sleep(0.005)
    (vm.dir / MOVING).unlink(missing_ok=True)  # the run a verb moved is over


def _end_qemu(vm: QemuMachine, proc: psutil.Process, timeout: float) -> None:
    with contextlib.suppress(BackendError, OperationTimeout):
        with _qmp.session(vm.dir / QMP_SOCKET, 5) as s:
            s.execute("quit", timeout=5)
    try:
        proc.wait(timeout=max(1.0, min(timeout, 30)))
    except psutil.TimeoutExpired:
        log.warning("%s: QEMU did not quit; killing pid %d", vm.name, proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass


def discard_run_files(directory: Path) -> None:
    """Delete saved and partial state and the record writer's temporary files."""
    for name in (SAVED_STATE, PARTIAL_STATE):
        (directory / name).unlink(missing_ok=True)
    for junk in directory.glob(".machine.json.*.tmp"):
        junk.unlink(missing_ok=True)
