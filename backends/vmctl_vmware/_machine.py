"""One VMware VM driven through vmrun: its state, its verbs, its vmware-vmx process.

vmrun has no verb that reports a VM's state, so the state is assembled from what VMware keeps:

- RUNNING or PAUSED: the ``.vmx`` is listed by ``vmrun list``. vmrun cannot tell a paused VM from
  a running one, so vmctl remembers its own pause/unpause in the machine's record (a VM paused or
  unpaused behind vmctl's back shows its last state set through vmctl).
- SUSPENDED: ``checkpoint.vmState`` in the ``.vmx`` names a ``.vmss`` file that exists.
- CRASHED: not listed, not suspended, and ``cleanShutdown = "FALSE"`` in the ``.vmx``: VMware sets
  that at power-on and writes TRUE when the VMX exits cleanly, so FALSE remains when it died.
- STOPPED: otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vmctl.backend.diskuse import allocated_bytes
from vmctl.backend.records import spec_from_record
from vmctl.backend.usage import usage_of_process
from vmctl.errors import (
    BackendError,
    ErrorCode,
    InvalidState,
    MachineNotFound,
    OperationTimeout,
    SnapshotNotFound,
    Unsupported,
)
from vmctl.interface import Machine
from vmctl.types import DiskUsage, MachineSpec, Snapshot, State, Usage

from . import _errors as E
from ._errors import VmrunError
from ._vmx import VmxFile

if TYPE_CHECKING:
    from ._hypervisor import VmwareHypervisor

__all__ = ["VmwareMachine", "find_vmx_process"]

log = logging.getLogger("vmctl.vmware")

#: vmrun calls that only read (``list``, ``listSnapshots``).
QUERY_TIMEOUT = 30.0
#: How long a background ``stop soft`` may wait for the guest before it is killed.
SOFT_STOP_TIMEOUT = 600.0
NIC = "ethernet0"


def find_vmx_process(vmx: Path) -> int | None:
    """The pid of the vmware-vmx process running ``vmx`` (its command line ends with the path)."""
    import psutil

    target = os.path.realpath(vmx)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not cmd or not os.path.basename(cmd[0]).lower().startswith("vmware-vmx"):
            continue
        if any(arg.lower().endswith(".vmx") and os.path.realpath(arg) == target for arg in cmd[1:]):
            return int(proc.info["pid"])
    return None


def parse_count_list(text: str, header: str) -> list[str]:
    """``Total <things>: N`` followed by N lines, as ``list`` and ``listSnapshots`` print them.

    >>> parse_count_list("Total snapshots: 2\\nfirst\\nsecond\\n", "Total snapshots")
    ['first', 'second']
    """
    lines = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    count_text = lines[0].split(":", 1)[1].strip() if lines and lines[0].startswith(header + ":") else ""
    if not count_text.isdigit():
        raise BackendError(f"vmrun printed no {header!r} line: {text[:200]!r}", stdout=text)
    items = lines[1:]  # names as printed: a snapshot name may begin or end with a space
    if len(items) != int(count_text):
        raise BackendError(f"vmrun: {header}: {count_text} announced, {len(items)} listed", stdout=text)
    return items


class VmwareMachine(Machine):
    hypervisor: VmwareHypervisor

    def __init__(self, hypervisor: VmwareHypervisor, name: str) -> None:
        super().__init__(hypervisor, name)
        self._spec: MachineSpec | None = None
        self._pid_cache: tuple[int, float] | None = None

    # -- files and record -----------------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self.hypervisor.store.path(self.name)

    @property
    def vmx(self) -> Path:
        """The machine's ``.vmx`` file (an adopted machine's where it was adopted)."""
        adopted = self._record().get("adopted")
        if adopted:
            return Path(adopted["vmx"])
        return self.directory / f"{self.name}.vmx"

    @property
    def managed(self) -> bool:
        return "adopted" not in self._record()

    def _record(self) -> dict[str, Any]:
        return self.hypervisor.store.read(self.name)

    def _update(self, **changes: Any) -> dict[str, Any]:
        return self.hypervisor.store.update(self.name, **changes)

    @contextlib.contextmanager
    def _exclusive(self, verb: str, timeout: float) -> Iterator[None]:
        """vmctl's store lock of the machine: vmrun itself serialises nothing across processes."""
        with self.hypervisor.store.locked(self.name, timeout=max(timeout, 30.0)):
            yield

    def _config(self) -> VmxFile:
        try:
            return VmxFile.load(self.vmx)
        except FileNotFoundError:
            raise MachineNotFound(self.name, "vmware") from None

    def _why(self, capability: str) -> str:
        if capability == "screenshot":
            # vmrun's captureScreen is a guest operation (VIX's CaptureScreenImage after
            # LoginInGuest): it needs VMware Tools and the guest's user name and password on
            # vmrun's command line (-gu/-gp), and vmctl puts no credentials on argv
            return "vmrun captureScreen needs guest credentials on its command line (-gu/-gp)"
        return ""

    @property
    def spec(self) -> MachineSpec:
        if self._spec is None:
            record = self._record()
            if "adopted" in record:  # read afresh from the .vmx: others may edit it
                from ._adopt import spec_from_vmx

                return spec_from_vmx(self.name, self._config(), self.vmx.parent)
            self._spec = spec_from_record(record["spec"])
        return self._spec

    # -- state ----------------------------------------------------------------------------
    def _listed(self) -> bool:
        out = self.hypervisor.vmrun("list", timeout=QUERY_TIMEOUT)
        target = os.path.realpath(self.vmx)
        return any(os.path.realpath(path) == target for path in parse_count_list(out, "Total running VMs"))

    def _saved_state_file(self, config: VmxFile) -> Path | None:
        name = config.get("checkpoint.vmState")
        if not name:
            return None
        path = Path(name) if os.path.isabs(name) else self.vmx.parent / name
        return path if path.is_file() else None

    def _get_state(self) -> State:
        record = self._record()
        if self._listed():
            return State.PAUSED if record.get("paused") else State.RUNNING
        config = self._config()
        if self._saved_state_file(config) is not None:
            return State.SUSPENDED
        if (config.get("cleanShutdown") or "").upper() == "FALSE":
            # A VM powering on right now has cleanShutdown FALSE before vmrun lists it: look again.
            if self._listed():
                return State.PAUSED if record.get("paused") else State.RUNNING
            return State.CRASHED
        return State.STOPPED

    def _state_or_unknown(self) -> State:
        try:
            return self._get_state()
        except Exception:  # only used to describe another error
            return State.UNKNOWN

    def _get_pid(self) -> int | None:
        if self._get_state() not in (State.RUNNING, State.PAUSED):
            return None
        return self._vmx_pid()

    def _vmx_pid(self) -> int | None:
        import psutil

        if self._pid_cache is not None:
            pid, created = self._pid_cache
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    return pid
            except psutil.Error:
                pass
            self._pid_cache = None
        found = find_vmx_process(self.vmx)
        if found is not None:
            with contextlib.suppress(psutil.Error):
                self._pid_cache = (found, psutil.Process(found).create_time())
        return found

    # -- running vmrun --------------------------------------------------------------------
    def _vmrun(self, verb: str, vmctl_verb: str, *args: str, timeout: float) -> str:
        try:
            return self.hypervisor.vmrun(verb, self.vmx, *args, timeout=timeout)
        except VmrunError as exc:
            self._raise_mapped(exc, vmctl_verb)

    def _raise_mapped(self, exc: VmrunError, verb: str) -> NoReturn:
        if exc.kind in (E.NOT_RUNNING, E.IS_RUNNING):
            raise InvalidState(self.name, verb, self._state_or_unknown()) from exc
        if exc.kind == E.VM_NOT_FOUND:
            raise MachineNotFound(self.name, "vmware") from exc
        if exc.kind == E.NOT_SUPPORTED:
            raise Unsupported("vmware", verb, f"vmrun -T {self.hypervisor.product}: {exc.vix_message}") from exc
        if exc.kind == E.ENCRYPTED:
            raise Unsupported("vmware", verb, "encrypted VMs need their password on vmrun's command line") from exc
        raise exc

    # -- power ----------------------------------------------------------------------------
    def _do_start(self, timeout: float) -> None:
        self._vmrun("start", "start", "nogui", timeout=timeout)
        self._update(paused=False)

    def _do_pause(self, timeout: float) -> None:
        self._vmrun("pause", "pause", timeout=timeout)
        self._update(paused=True)

    def _do_resume(self, timeout: float) -> None:
        self._vmrun("unpause", "resume", timeout=timeout)
        self._update(paused=False)

    def _do_suspend(self, timeout: float) -> None:
        if self._record().get("paused"):
            self._vmrun("unpause", "suspend", timeout=timeout)
            self._update(paused=False)
        self._vmrun("suspend", "suspend", "hard", timeout=timeout)

    def _do_request_shutdown(self) -> None:
        # `stop soft` asks the guest through VMware Tools and blocks until the VM is off; the
        # base class watches the state and forces the power off at its deadline.
        self.hypervisor.vmrun.spawn("stop", self.vmx, "soft", timeout=SOFT_STOP_TIMEOUT)

    def _do_poweroff(self, timeout: float) -> None:
        state = self._get_state()
        if state in (State.RUNNING, State.PAUSED):
            try:
                self.hypervisor.vmrun("stop", self.vmx, "hard", timeout=timeout)
            except VmrunError as exc:
                if exc.kind != E.NOT_RUNNING:  # it went off by itself meanwhile
                    self._raise_mapped(exc, "poweroff")
        elif state is State.SUSPENDED:
            self._discard_saved_state()
        elif state is State.CRASHED:
            config = self._config()
            config.set("cleanShutdown", "TRUE")
            config.save(self.vmx)
        self._update(paused=False)

    def _discard_saved_state(self) -> None:
        """vmrun cannot power off a suspended VM: delete its .vmss and the key naming it."""
        config = self._config()
        saved = self._saved_state_file(config)
        config.remove("checkpoint.vmState")
        config.remove("checkpoint.vmState.readOnly")
        config.save(self.vmx)
        if saved is not None:
            saved.unlink(missing_ok=True)

    def _do_reset(self, timeout: float) -> None:
        self._vmrun("reset", "restart", "hard", timeout=timeout)
        self._update(paused=False)

    def _do_reboot(self, timeout: float) -> bool:
        try:
            self.hypervisor.vmrun("reset", self.vmx, "soft", timeout=timeout)
        except OperationTimeout:
            return False
        except VmrunError as exc:
            if exc.kind == E.TOOLS_NOT_RUNNING:
                log.warning("%s: VMware Tools are not running; cannot reboot the guest gracefully", self.name)
                return False
            self._raise_mapped(exc, "restart")
        return True

    # -- snapshots ------------------------------------------------------------------------
    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        state = self._get_state()
        record = self._record()
        self._vmrun("snapshot", "snapshot", name, timeout=timeout)
        snap = Snapshot(
            name=name,
            created=time.time(),
            has_memory=state in (State.RUNNING, State.PAUSED),
            description=description,
            parent=record.get("current"),
        )
        snapshots = dict(record.get("snapshots", {}))
        snapshots[name] = {k: v for k, v in snap.to_dict().items() if k != "name"}
        self._update(snapshots=snapshots, current=name)
        return snap

    def _do_snapshots(self) -> list[Snapshot]:
        names = parse_count_list(
            self._vmrun("listSnapshots", "snapshots", timeout=QUERY_TIMEOUT),
            "Total snapshots",
        )
        known: dict[str, dict[str, Any]] = self._record().get("snapshots", {})
        found = []
        for name in names:
            meta = known.get(name, {})
            found.append(
                Snapshot(
                    name=name,
                    created=float(meta.get("created", 0.0)),
                    has_memory=bool(meta.get("has_memory", False)),
                    description=str(meta.get("description", "")),
                    parent=meta.get("parent"),
                )
            )
        return sorted(found, key=lambda s: s.created)

    def _snapshot_call(self, verb: str, vmctl_verb: str, name: str, timeout: float) -> None:
        try:
            self.hypervisor.vmrun(verb, self.vmx, name, timeout=timeout)
        except VmrunError as exc:
            if exc.kind == E.SNAPSHOT_NOT_FOUND:
                raise SnapshotNotFound(self.name, name) from exc
            self._raise_mapped(exc, vmctl_verb)

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        self._snapshot_call("revertToSnapshot", "revert", snapshot.name, timeout)
        self._update(paused=False, current=snapshot.name)
        state = self._get_state()
        if snapshot.has_memory and state is State.SUSPENDED:
            # Some VMware versions leave a live snapshot's VM suspended after the revert.
            self._vmrun("start", "revert", "nogui", timeout=timeout)
        elif not snapshot.has_memory and state is State.RUNNING:
            self._vmrun("stop", "revert", "hard", timeout=timeout)

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        self._snapshot_call("deleteSnapshot", "delete_snapshot", name, timeout)
        record = self._record()
        snapshots: dict[str, dict[str, Any]] = dict(record.get("snapshots", {}))
        gone = snapshots.pop(name, {})
        for meta in snapshots.values():
            if meta.get("parent") == name:
                meta["parent"] = gone.get("parent")
        current = record.get("current")
        self._update(snapshots=snapshots, current=gone.get("parent") if current == name else current)

    # -- VMware Tools ---------------------------------------------------------------------
    def tools_state(self) -> str:
        """What ``vmrun checkToolsState`` says: ``running``, ``installed``, or ``unknown`` (powered off)."""
        try:
            return self.hypervisor.vmrun.tools_state(self.vmx, timeout=QUERY_TIMEOUT)
        except VmrunError as exc:
            self._raise_mapped(exc, "tools_state")

    def guest_address(self, wait: bool = False, timeout: float = QUERY_TIMEOUT) -> str:
        """The guest's IP address as VMware Tools report it (``vmrun getGuestIPAddress``).

        ``wait``: let vmrun wait for Tools to report one (``-wait``), up to ``timeout``. Raises
        :class:`InvalidState` if the VM is not powered on, and a ``BackendError`` with code
        ``guest`` if VMware Tools are not running.
        """
        out = self._vmrun("getGuestIPAddress", "guest_address", *(["-wait"] if wait else []), timeout=timeout)
        text = out.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise BackendError(
                f"vmrun getGuestIPAddress printed {text[:200]!r}, not an IP address",
                command=self.hypervisor.vmrun.argv("getGuestIPAddress", self.vmx),
                stdout=out,
                code=ErrorCode.PROTOCOL,
            ) from None

    # -- the rest -------------------------------------------------------------------------
    def _do_set_network(self, enabled: bool) -> None:
        verb = "connectNamedDevice" if enabled else "disconnectNamedDevice"
        self._vmrun(verb, "set_network", NIC, timeout=QUERY_TIMEOUT)

    def _do_disk_usage(self) -> DiskUsage:
        # the .vmx, linked-clone delta, saved state, snapshots and logs share the .vmx's directory
        return DiskUsage(self.name, allocated_bytes([self.vmx.parent]) or 0, (str(self.vmx.parent),))

    def _do_usage(self) -> Usage:
        if self._get_state() not in (State.RUNNING, State.PAUSED):
            return Usage(machine=self.name)
        return usage_of_process(self.name, self._vmx_pid())

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        """Forget a VM vmctl adopted: its .vmx and disks stay unless ``delete_disks`` (then
        ``vmrun deleteVM``, which deletes the VM's files and the disks it names)."""
        if self._listed():
            raise InvalidState(self.name, "destroy", self._state_or_unknown())
        if delete_disks:
            self._vmrun("deleteVM", "destroy", timeout=timeout)
        self.hypervisor.store.remove(self.name)
        self._pid_cache = None

    def _do_destroy(self, timeout: float) -> None:
        # Only the machine's own directory goes: its linked-clone delta disk, saved state and
        # snapshots. `vmrun deleteVM` is not used: it deletes the disks a .vmx names, which for
        # overlay=False is the user's own disk.
        if self._listed():
            raise InvalidState(self.name, "destroy", self._state_or_unknown())
        self.hypervisor.store.remove(self.name)
        self._pid_cache = None
