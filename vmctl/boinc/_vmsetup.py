"""Setting up a task's VM: the backend connection, the machine spec the job file describes, the
VM's creation, and its registration with the reaper.

The backend and its connection options come from the host's profile the job names (see
:mod:`vmctl.boinc.hostconfig`); the job adds only options that choose nothing on the host.
The spec comes from the job and the slot: the base image, kernel and initrd the slot links to
(a missing file is hypervisor-side trouble, retried; an empty one is a broken task), the CPUs the
client gives the task, port forwards on loopback, the shared directories, and the guest console
in the slot. The VM's state (overlay, saved state, snapshots) lives in the slot where the
backend allows it; elsewhere a record under the BOINC data directory lets the reaper delete the
VMs of tasks that vanished.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import vmctl
from vmctl.backend.ports import free_port
from vmctl.boinc import reaper
from vmctl.boinc._bootmedia import cache_disk, context_iso, write_floppy
from vmctl.boinc._guestfiles import CONSOLE_LOG
from vmctl.boinc._outcome import Fatal, Trouble
from vmctl.boinc._task import Task
from vmctl.boinc.hostconfig import Profile
from vmctl.boinc.slot import SlotError

__all__ = [
    "DEFAULT_STATE_DIR",
    "Connect",
    "Registration",
    "backend_options",
    "connect_backend",
    "create_machine",
    "default_connect",
    "machine_spec",
    "prepare_console_log",
]

log = logging.getLogger("vmctl.boinc")

DEFAULT_STATE_DIR = "vm"
"""Where in the slot the QEMU backend keeps the VM's overlay, saved state and snapshots."""

Connect = Callable[[str, dict[str, Any]], vmctl.Hypervisor]


def default_connect(backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
    """``vmctl.connect(backend, **options)``."""
    return vmctl.connect(backend, **options)


def backend_options(task: Task, profile: Profile) -> dict[str, Any]:
    """The profile's options with ``{slot}`` and ``{project}`` filled in, plus the job's own
    (only :data:`~vmctl.boinc.hostconfig.JOB_BACKEND_OPTIONS`); for QEMU, a state directory in
    the slot unless the profile names one (recorded in the task's record)."""

    def expand(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{slot}", str(task.slot.path)).replace("{project}", task.init.project_dir)
        return value

    options = {k: expand(v) for k, v in profile.options.items()}
    options.update(task.job.backend_options)
    if profile.backend == "qemu" and "state_dir" not in options:
        # The VM's overlay, saved state and snapshots live in the slot: they survive a client
        # restart, count against the task's disk bound like vboxwrapper's VM folder, and the
        # client deletes them with the slot when the task ends.
        state_dir = task.slot.path / DEFAULT_STATE_DIR
        options["state_dir"] = str(state_dir)
        task.state.state_dir = str(state_dir)
    return options


def connect_backend(connect: Connect, backend: str, options: dict[str, Any]) -> vmctl.Hypervisor:
    """Connect to the job's backend; failing that is trouble (the task is retried later)."""
    try:
        return connect(backend, dict(options))
    except vmctl.BackendUnavailable as exc:
        raise Trouble(f"the VM backend is unavailable: {exc}") from exc
    except vmctl.VmctlError as exc:
        raise Trouble(f"cannot connect to the VM backend {backend}: {exc}") from exc


def _slot_file(task: Task, what: str, name: str | None) -> Path | None:
    if name is None:
        return None
    try:
        path = task.slot.resolve(name)
    except SlotError as exc:
        raise Fatal(f"the {what}: {exc}") from None
    if not path.exists():
        raise Trouble(f"the {what} {name!r} is missing ({path})")
    if not path.is_file():
        raise Fatal(f"the {what} {name!r} is not a regular file ({path})")
    if path.stat().st_size == 0:
        raise Fatal(f"the {what} {name!r} is empty ({path})")
    return path


def _project_image(task: Task, name: str) -> Path:
    """vboxwrapper's ``multiattach_vdi_file``: the file ``name`` in the project directory (the
    app version's physical name; the slot holds at most a link with another, logical name).
    A slot file of that name stands in where the project directory is unknown (standalone)."""
    project = task.slot.project_dir or (Path(task.init.project_dir) if task.init.project_dir else None)
    if project is not None and (os.path.lexists(project / name) or not os.path.lexists(task.slot.path / name)):
        path = project / name
        real = os.path.realpath(path)
        if os.path.commonpath([real, os.path.realpath(project)]) != os.path.realpath(project):
            raise Fatal(f"the base image {name!r} in the project directory leads outside it ({real})")
        if not path.exists():
            raise Fatal(
                f"the base image (multiattach_vdi_file) {name!r} is not in the project directory {project}: "
                "the app version must include it under that physical name"
            )
        if not path.is_file() or path.stat().st_size == 0:
            raise Fatal(f"the base image {name!r} in the project directory is not a non-empty regular file ({path})")
        return path
    disk = _slot_file(task, "base image", name)
    assert disk is not None
    return disk


def _host_port(task: Task, guest_port: int) -> int:
    """The host port for a forward to ``guest_port`` chosen when the VM is made: the one this
    task had before if it is still free (boinc_get_port's choice kept in vboxwrapper's
    checkpoint), else a free one."""
    kept = task.state.extra.get("host_ports", {}).get(str(guest_port))
    if isinstance(kept, int) and 1024 <= kept <= 65535:
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", kept))
            return kept
    return free_port()


def prepare_console_log(path: Path) -> None:
    """Create the guest's console log as a private (0600) regular file before the hypervisor
    appends to it; whatever else is at ``path`` (a link, a FIFO) is removed, never followed."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EWOULDBLOCK):
                raise
            _remove(path)
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o600)
                return
        finally:
            os.close(fd)
        _remove(path)
    raise Fatal(f"cannot create the console log {path}: something keeps replacing it")


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def machine_spec(task: Task, shared_path: Path | None) -> vmctl.MachineSpec:
    """The VM the job describes, its disk an overlay over the slot's base image."""
    job, init = task.job, task.init
    if job.image_in_project and job.image:
        disk: Path | None = _project_image(task, job.image)
    else:
        disk = _slot_file(task, "base image", job.image)
    cdrom = context_iso(task) if job.cdrom else None
    extra_disks = [cache_disk(task)] if job.cache_disk else []
    floppy = write_floppy(task) if job.floppy else None
    kernel = _slot_file(task, "kernel", job.kernel)
    initrd = _slot_file(task, "initrd", job.initrd)
    cpus = job.cpus or max(1, math.ceil(init.ncpus - 1e-9))
    network = None
    if job.network:
        forwards = [
            vmctl.PortForward(host_port=pf.host_port or _host_port(task, pf.guest_port), guest_port=pf.guest_port)
            for pf in job.port_forwards
        ]
        for pf in forwards:
            log.info("guest port %d is reachable at 127.0.0.1:%d", pf.guest_port, pf.host_port)
        task.state.extra["host_ports"] = {str(pf.guest_port): pf.host_port for pf in forwards}
        network = vmctl.Network(port_forwards=forwards)
    shared: dict[str, Path] = {}
    readonly: set[str] = set()
    if shared_path is not None:
        shared[job.shared_tag] = shared_path
    if job.share_project_dir and init.project_dir:
        # read-only: the client runs the project's programs and later tasks use its images
        shared["project"] = Path(init.project_dir)
        readonly.add("project")
    if job.scratch_dir and init.project_dir:
        shared["scratch"] = Path(init.project_dir) / "scratch"
    try:
        return vmctl.MachineSpec(
            name=task.vm_name,
            disk=disk,
            overlay=True,
            memory_mib=job.memory_mib,
            cpus=cpus,
            kernel=kernel,
            initrd=initrd,
            cmdline=job.cmdline,
            network=network,
            shared_dirs=shared,
            readonly_shares=frozenset(readonly),
            serial_log=task.slot.path / CONSOLE_LOG,
            cdrom=cdrom,
            boot_from_cdrom=job.boot_cdrom and cdrom is not None,
            extra_disks=extra_disks,
            floppy=floppy,
        )
    except vmctl.InvalidSpec as exc:
        raise Fatal(f"the job asks for an impossible VM: {exc}") from exc


def create_machine(hv: vmctl.Hypervisor, task: Task, spec: vmctl.MachineSpec) -> vmctl.Machine:
    """Create the task's VM from ``spec`` (without the console file where the backend cannot
    write one into the slot) and start the task's record afresh."""
    log.info(
        "creating the VM %s: %d MiB, %d CPU(s), image %s (copy-on-write overlay), network %s",
        spec.name,
        spec.memory_mib,
        spec.cpus,
        spec.disk or spec.kernel,
        "on" if spec.network else "off",
    )
    for what, path in (("CD-ROM", spec.cdrom), ("floppy", spec.floppy), *(("extra disk", d) for d in spec.extra_disks)):
        if path is not None:
            log.info("the VM's %s: %s", what, path)
    if spec.serial_log is not None and not hv.capabilities.serial_log:
        # Backends whose VMs run elsewhere (vSphere) cannot write the console into the slot.
        spec = replace(spec, serial_log=None)
        log.warning("no %s: the backend cannot write the guest console to a file here", CONSOLE_LOG)
    if spec.serial_log is not None:
        prepare_console_log(spec.serial_log)
    try:
        vm = hv.create(spec)
    except vmctl.InvalidSpec as exc:
        raise Fatal(f"the backend refused the VM: {exc}") from exc
    except vmctl.Unsupported as exc:
        raise Fatal(f"the backend {task.job.backend} cannot run this job: {exc}") from exc
    except vmctl.MachineExists:
        vm = hv.machine(spec.name)
    except vmctl.VmctlError as exc:
        raise Trouble(f"cannot create the VM: {exc}") from exc
    state = task.state
    state.booted = False
    state.checkpoint = None
    state.saved_cpu_time = None
    state.process_pid = None
    task.save_state()
    return vm


class Registration:
    """The task's VM in the reaper's registry (``registry`` None: not registered)."""

    def __init__(self, registry: Path | None, task: Task, options: dict[str, Any]) -> None:
        self._registry = registry
        self._task = task
        self._options = options
        self._record: reaper.Record | None = None

    def register(self) -> None:
        """Record the VM, so that the reaper deletes it if the task vanishes."""
        if self._registry is None:
            return
        task = self._task
        self._record = reaper.Record(
            vm=task.vm_name,
            backend=task.job.backend,
            options=self._options,
            slot_dir=str(task.slot.path),
            result_name=task.init.result_name,
            state_dir=task.state.state_dir,
        )
        try:
            reaper.register(self._registry, self._record)
        except OSError as exc:
            log.warning("cannot register the VM for the reaper in %s: %s", self._registry, exc)
            self._record = None

    def update(self, pid: int | None) -> None:
        """Record the VM's host process (the reaper kills it if its task vanished)."""
        if self._record is not None and self._registry is not None and self._record.pid != pid:
            self._record.pid = pid
            self._record.pid_started = None
            with contextlib.suppress(OSError):
                reaper.register(self._registry, self._record)

    def unregister(self) -> None:
        """The VM is gone: forget it."""
        if self._record is not None and self._registry is not None:
            reaper.unregister(self._registry, self._record)
            self._record = None
