"""One vSphere virtual machine behind vmctl's lifecycle interface."""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from vmctl.backend.records import spec_from_record
from vmctl.errors import BackendError, InvalidSpec, MachineNotFound, SnapshotNotFound, VmctlError
from vmctl.interface import Machine
from vmctl.screenshot import MAX_SCREENSHOT_BYTES, as_png
from vmctl.types import MachineSpec, Network, Snapshot, State, Usage

from ._errors import ToolsUnavailable
from ._faults import map_fault
from ._session import vim, vmodl

if TYPE_CHECKING:
    from ._hypervisor import VSphereHypervisor

__all__ = ["SPEC_KEY", "VSphereMachine"]

log = logging.getLogger("vmctl.vsphere")

SPEC_KEY = "vmctl.spec"
_POWER = {"poweredOn": State.RUNNING, "poweredOff": State.STOPPED, "suspended": State.SUSPENDED}
_TOOLS_RUNNING = "guestToolsRunning"
#: Real-time statistics: 20-second samples, kept for an hour.
_REALTIME = 20
_REALTIME_SAMPLES = 180
#: The first historical interval: 5-minute rollups, kept for a day.
_HISTORIC = 300
#: Counters summed over the samples since boot: (vmctl field, counter, unit multiplier, per second?)
_CUMULATIVE = (
    ("cpu_seconds", "cpu.used.summation", 0.001, False),  # ms used per sample
    ("disk_read_bytes", "disk.read.average", 1024.0, True),  # KB/s averaged over the sample
    ("disk_write_bytes", "disk.write.average", 1024.0, True),
    ("net_rx_bytes", "net.received.average", 1024.0, True),
    ("net_tx_bytes", "net.transmitted.average", 1024.0, True),
)
_MEMORY_COUNTER = "mem.consumed.average"  # KB


def unchecked_spec(**values: Any) -> MachineSpec:
    """A MachineSpec describing an existing VM whose paths need not exist on this host."""
    spec = object.__new__(MachineSpec)
    for f in fields(MachineSpec):
        if f.name in values:
            value = values[f.name]
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            value = f.default
        object.__setattr__(spec, f.name, value)
    return spec


def split_datastore_path(text: str) -> tuple[str, str]:
    """``"[datastore1] vm/vm-1.png"`` as ``("datastore1", "vm/vm-1.png")``.

    >>> split_datastore_path("[datastore1] my vm/my vm-1.png")
    ('datastore1', 'my vm/my vm-1.png')
    """
    if not text.startswith("[") or "]" not in text:
        raise BackendError(f"{text!r} is not a datastore path", command="CreateScreenshot_Task")
    datastore, _, path = text[1:].partition("]")
    path = path.strip()
    if not datastore or not path or ".." in path.split("/"):
        raise BackendError(f"{text!r} is not a datastore path", command="CreateScreenshot_Task")
    return datastore, path


class VSphereMachine(Machine):
    """A VM found by name in the connection's folder; operations follow its managed object."""

    hypervisor: VSphereHypervisor

    def __init__(self, hypervisor: VSphereHypervisor, name: str, ref: Any) -> None:
        super().__init__(hypervisor, name)
        self._ref = ref

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def _session(self) -> Any:
        return self.hypervisor.session

    @property
    def ref(self) -> Any:
        """The pyvmomi ``vim.VirtualMachine`` this handle drives."""
        return self._ref

    def _fault(self, fault: BaseException, verb: str, snapshot: str | None = None) -> VmctlError:
        tools = None
        if isinstance(fault, vim.fault.ToolsUnavailable):
            tools = self._props(["guest.toolsRunningStatus"]).get("guest.toolsRunningStatus")
        return map_fault(
            fault, machine=self.name, verb=verb, state=self._get_state, snapshot=snapshot, tools_state=tools
        )

    def _props(self, paths: Sequence[str]) -> dict[str, Any]:
        """Read properties; if the VM object is gone, look the name up again once."""
        try:
            return dict(self._session.props(self._ref, paths))
        except vmodl.fault.ManagedObjectNotFound:
            pass
        self._ref = self.hypervisor.find_ref(self.name)  # raises MachineNotFound
        try:
            return dict(self._session.props(self._ref, paths))
        except vmodl.fault.ManagedObjectNotFound:
            raise MachineNotFound(self.name, "vsphere") from None

    def _call(self, verb: str, call: Callable[[Any], Any], snapshot: str | None = None) -> Any:
        try:
            return self._session.invoke(f"{verb} {self.name}", lambda: call(self._ref))
        except vmodl.MethodFault as fault:
            raise self._fault(fault, verb, snapshot) from fault

    def _task(self, verb: str, start: Callable[[Any], Any], timeout: float, snapshot: str | None = None) -> Any:
        try:
            task = self._session.invoke(f"{verb} {self.name}", lambda: start(self._ref))
            return self._session.wait_task(task, timeout, f"{verb} {self.name}")
        except vmodl.MethodFault as fault:
            raise self._fault(fault, verb, snapshot) from fault

    def _extra_config(self) -> dict[str, str]:
        options = self._props(["config.extraConfig"]).get("config.extraConfig") or []
        return {str(o.key): str(o.value) for o in options}

    # -- what vmctl asks -----------------------------------------------------------------------
    @property
    def spec(self) -> MachineSpec:
        """The spec the VM was created from; for a VM vmctl did not create, one describing it."""
        recorded = self._extra_config().get(SPEC_KEY)
        if recorded:
            try:
                data = json.loads(recorded)
            except ValueError:
                data = None
            if isinstance(data, dict):
                return spec_from_record(data)
        hw = self._props(["config.hardware.memoryMB", "config.hardware.numCPU", "config.hardware.device"])
        nics = [d for d in hw.get("config.hardware.device") or () if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        return unchecked_spec(
            name=self.name,
            overlay=False,
            memory_mib=int(hw.get("config.hardware.memoryMB") or 0),
            cpus=int(hw.get("config.hardware.numCPU") or 0),
            network=Network() if nics else None,
        )

    def _get_state(self) -> State:
        p = self._props(["runtime.powerState", "runtime.connectionState"])
        if p.get("runtime.connectionState", "connected") != "connected":
            return State.UNKNOWN
        return _POWER.get(str(p.get("runtime.powerState")), State.UNKNOWN)

    def _wait_changed(self, last: State, timeout: float) -> None:
        time.sleep(min(0.2, max(timeout, 0.0)))

    # -- power ---------------------------------------------------------------------------------
    def _do_start(self, timeout: float) -> None:
        self._task("start", lambda vm: vm.PowerOnVM_Task(), timeout)

    def _do_poweroff(self, timeout: float) -> None:
        self._task("poweroff", lambda vm: vm.PowerOffVM_Task(), timeout)

    def _do_suspend(self, timeout: float) -> None:
        self._task("suspend", lambda vm: vm.SuspendVM_Task(), timeout)

    def _do_reset(self, timeout: float) -> None:
        self._task("restart", lambda vm: vm.ResetVM_Task(), timeout)

    def _require_tools(self, verb: str) -> None:
        tools = self._props(["guest.toolsRunningStatus"]).get("guest.toolsRunningStatus")
        if tools != _TOOLS_RUNNING:
            raise ToolsUnavailable(self.name, verb, tools)

    def _do_request_shutdown(self) -> None:
        # vSphere has no ACPI power button in its API: a graceful shutdown goes through VMware Tools.
        self._require_tools("stop")
        self._call("stop", lambda vm: vm.ShutdownGuest())

    def _do_reboot(self, timeout: float) -> bool:
        self._require_tools("restart")
        deadline = time.monotonic() + timeout
        self._call("restart", lambda vm: vm.RebootGuest())
        # The guest went down when its Tools stop answering, and came back when they run again.
        went_down = False
        while time.monotonic() < deadline:
            tools = self._props(["guest.toolsRunningStatus"]).get("guest.toolsRunningStatus")
            if tools != _TOOLS_RUNNING:
                went_down = True
            elif went_down:
                return True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return False

    # -- snapshots -----------------------------------------------------------------------------
    def _snapshot_nodes(self) -> list[tuple[Any, Any]]:
        """(node, parent node) pairs, oldest first.

        Only ``snapshot.rootSnapshotList`` is read: ``snapshot.currentSnapshot`` is what vcsim
        0.24.2 leaves unreadable after its crash on removing a current snapshot without a parent.
        """
        roots = self._props(["snapshot.rootSnapshotList"]).get("snapshot.rootSnapshotList")
        pairs: list[tuple[Any, Any]] = []

        def visit(nodes: Sequence[Any], parent: Any) -> None:
            for node in nodes or ():
                pairs.append((node, parent))
                visit(node.childSnapshotList, node)

        visit(roots or (), None)
        pairs.sort(key=lambda pair: (pair[0].createTime, pair[0].id))
        return pairs

    def _do_snapshots(self) -> list[Snapshot]:
        return [
            Snapshot(
                name=str(node.name),
                created=node.createTime.timestamp(),
                # A snapshot records the power state it was taken in; only a powered-on (or
                # suspended) one carries memory and brings the guest back running.
                has_memory=node.state in ("poweredOn", "suspended"),
                description=str(node.description or ""),
                parent=str(parent.name) if parent is not None else None,
            )
            for node, parent in self._snapshot_nodes()
        ]

    def _node(self, name: str) -> tuple[Any, Any]:
        found = [pair for pair in self._snapshot_nodes() if pair[0].name == name]
        if not found:
            raise SnapshotNotFound(self.name, name)
        return found[-1]

    def _do_snapshot(self, name: str, description: str, timeout: float) -> Snapshot:
        memory = self._get_state() is State.RUNNING
        self._task(
            "snapshot",
            lambda vm: vm.CreateSnapshot_Task(name=name, description=description, memory=memory, quiesce=False),
            timeout,
        )
        taken = [s for s in self._do_snapshots() if s.name == name]
        if not taken:  # another caller deleted it already (vSphere holds no lock across the two calls)
            raise SnapshotNotFound(self.name, name)
        return taken[-1]

    def _do_revert(self, snapshot: Snapshot, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        node, _ = self._node(snapshot.name)
        try:
            self._session.run_task(
                f"revert {self.name} to {snapshot.name}",
                lambda: node.snapshot.RevertToSnapshot_Task(suppressPowerOn=False),
                timeout,
            )
        except vmodl.MethodFault as fault:
            raise self._fault(fault, "revert", snapshot.name) from fault
        # vSphere ends a revert in the snapshot's power state; a server that leaves the power
        # state alone (vcsim does) is brought there, so that every server ends the same way.
        wanted = State.RUNNING if snapshot.has_memory else State.STOPPED
        state = self._get_state()
        left = max(1.0, deadline - time.monotonic())
        if wanted is State.RUNNING and state in (State.STOPPED, State.SUSPENDED):
            log.debug("%s: server left it %s after a revert to %s; powering on", self.name, state, snapshot.name)
            self._do_start(left)
        elif wanted is State.STOPPED and state in (State.RUNNING, State.SUSPENDED):
            log.debug("%s: server left it %s after a revert to %s; powering off", self.name, state, snapshot.name)
            self._do_poweroff(left)

    def _do_delete_snapshot(self, name: str, timeout: float) -> None:
        pairs = self._snapshot_nodes()
        node, parent = self._node(name)
        try:
            current = self._props(["snapshot.currentSnapshot"]).get("snapshot.currentSnapshot")
        except BackendError:  # unreadable after an earlier vcsim crash; only the hint below needs it
            current = None
        is_current_root = parent is None and current is not None and current._moId == node.snapshot._moId
        try:
            if len(pairs) == 1:
                # The only snapshot: removing all is the same, and avoids vcsim 0.24.2's crash
                # on removing a current snapshot that has no parent.
                self._task("delete_snapshot", lambda vm: vm.RemoveAllSnapshots_Task(consolidate=True), timeout, name)
            else:
                self._session.run_task(
                    f"delete snapshot {name} of {self.name}",
                    lambda: node.snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
                    timeout,
                )
        except vmodl.MethodFault as fault:
            raise self._fault(fault, "delete_snapshot", name) from fault
        except BackendError as exc:
            if exc.code == "connection" and is_current_root:
                raise BackendError(
                    f"{exc.message} (removing the current snapshot {name!r} while it has no parent: vcsim 0.24.2 "
                    "crashes on this; revert to another snapshot first)",
                    command=exc.command,
                    code=exc.code,
                    native=exc.native,
                ) from exc
            raise

    # -- usage -------------------------------------------------------------------------------
    def _do_usage(self) -> Usage:
        p = self._props(["runtime.powerState", "summary.runtime.bootTime", "summary.quickStats.hostMemoryUsage"])
        if p.get("runtime.powerState") != "poweredOn":
            return Usage(machine=self.name)
        boot = p.get("summary.runtime.bootTime")
        totals, latest = self._perf(boot) if boot is not None else ({}, {})
        memory: int | None = None
        host_mib = p.get("summary.quickStats.hostMemoryUsage")
        if host_mib:
            memory = int(host_mib) << 20
        elif (consumed_kb := latest.get(_MEMORY_COUNTER)) is not None:
            memory = int(consumed_kb) * 1024
        values: dict[str, Any] = {}
        for field, _counter, _unit, _rate in _CUMULATIVE:
            value = totals.get(field)
            values[field] = None if value is None else (value if field == "cpu_seconds" else int(value))
        return Usage(machine=self.name, memory_bytes=memory, **values)

    def _query(
        self,
        counters: dict[str, int],
        interval: int,
        start: datetime.datetime,
        end: datetime.datetime | None,
        samples: int,
    ) -> tuple[dict[str, list[tuple[datetime.datetime, int]]], list[datetime.datetime]]:
        pm = self.hypervisor.content.perfManager
        spec = vim.PerformanceManager.QuerySpec(
            entity=self._ref,
            metricId=[vim.PerformanceManager.MetricId(counterId=key, instance="") for key in counters.values()],
            intervalId=interval,
            maxSample=samples,  # vcsim returns nothing without it
            startTime=start,
            endTime=end,
            format="normal",
        )
        names = {key: name for name, key in counters.items()}
        result = self._call("usage", lambda vm: pm.QueryPerf([spec])) or []
        series: dict[str, list[tuple[datetime.datetime, int]]] = {}
        stamps: list[datetime.datetime] = []
        for entity in result:
            times = [s.timestamp for s in entity.sampleInfo or ()]
            stamps.extend(times)
            for values in entity.value or ():
                name = names.get(values.id.counterId)
                if name is not None:
                    series[name] = [
                        (t, int(v)) for t, v in zip(times, values.value or (), strict=False) if v is not None and v >= 0
                    ]
        return series, stamps

    def _perf(self, boot: datetime.datetime) -> tuple[dict[str, float | None], dict[str, int | None]]:
        """Totals since ``boot`` of the cumulative counters, and the latest memory sample."""
        known = self.hypervisor.perf_counters()
        wanted = {counter: known[counter] for _f, counter, _u, _r in _CUMULATIVE if counter in known}
        if _MEMORY_COUNTER in known:
            wanted[_MEMORY_COUNTER] = known[_MEMORY_COUNTER]
        if not wanted:
            return {}, {}
        now = datetime.datetime.now(datetime.UTC)
        window_start = max(boot, now - datetime.timedelta(seconds=_REALTIME * _REALTIME_SAMPLES))
        series, stamps = self._query(wanted, _REALTIME, window_start, None, _REALTIME_SAMPLES)
        history: dict[str, list[tuple[datetime.datetime, int]]] | None = None
        oldest = min(stamps) if stamps else now
        if oldest - datetime.timedelta(seconds=_REALTIME) > boot + datetime.timedelta(seconds=2 * _REALTIME):
            # Booted before the real-time window: the older part comes from 5-minute rollups, if
            # the server's statistics level keeps these counters there (else the total is unknown).
            end = oldest - datetime.timedelta(seconds=_REALTIME)
            history, _ = self._query(
                wanted, _HISTORIC, boot, end, math.ceil((end - boot).total_seconds() / _HISTORIC) + 1
            )
        totals: dict[str, float | None] = {}
        for field, counter, unit, per_second in _CUMULATIVE:
            if counter not in series:
                totals[field] = None
                continue
            scale = unit * (_REALTIME if per_second else 1)
            total = sum(v for _t, v in series[counter]) * scale
            if history is not None:
                if counter not in history:
                    totals[field] = None
                    continue
                total += sum(v for _t, v in history[counter]) * unit * (_HISTORIC if per_second else 1)
            totals[field] = total
        memory = series.get(_MEMORY_COUNTER)
        latest = {_MEMORY_COUNTER: max(memory)[1] if memory else None}
        return totals, latest

    # -- settings ----------------------------------------------------------------------------
    def _reconfigure(self, verb: str, spec: Any, timeout: float = 120) -> None:
        self._task(verb, lambda vm: vm.ReconfigVM_Task(spec=spec), timeout)

    def _do_set_cpu_limit(self, percent: int) -> None:
        p = self._props(["config.hardware.numCPU", "runtime.host"])
        limit = -1  # unlimited
        if percent < 100:
            host = p.get("runtime.host")
            mhz = (
                self._session.props(host, ["summary.hardware.cpuMhz"]).get("summary.hardware.cpuMhz") if host else None
            )
            if not mhz:
                raise BackendError(
                    f"set_cpu_limit {self.name}: the host's CPU speed is unknown", command="set_cpu_limit"
                )
            limit = max(1, math.ceil(percent / 100 * int(p.get("config.hardware.numCPU") or 1) * int(mhz)))
        spec = vim.vm.ConfigSpec(cpuAllocation=vim.ResourceAllocationInfo(limit=limit))
        self._reconfigure("set_cpu_limit", spec)

    def cpu_limit_mhz(self) -> int | None:
        """The VM's CPU limit in MHz as vSphere holds it (None: unlimited)."""
        limit = self._props(["config.cpuAllocation.limit"]).get("config.cpuAllocation.limit")
        return None if limit is None or int(limit) < 0 else int(limit)

    def _nics(self) -> list[Any]:
        devices = self._props(["config.hardware.device"]).get("config.hardware.device") or []
        return [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]

    def _do_screenshot(self, timeout: float) -> bytes:
        """``CreateScreenshot_Task`` writes a PNG beside the VM's files on its datastore; it is
        downloaded (bounded) and deleted. A server without it (vcsim) answers MethodNotFound,
        which is :class:`Unsupported`."""
        result = self._task("screenshot", lambda vm: vm.CreateScreenshot_Task(), timeout)
        datastore, path = split_datastore_path(str(result))
        hv = self.hypervisor
        try:
            data = self._session.download(hv.datacenter_path, datastore, path, MAX_SCREENSHOT_BYTES, timeout)
        finally:
            try:
                hv.delete_datastore_path(datastore, path, timeout)
            except VmctlError as exc:
                log.info("vsphere: the screenshot [%s] %s was not deleted: %s", datastore, path, exc)
        return as_png(data)

    def _do_set_network(self, enabled: bool) -> None:
        nics = self._nics()
        if not nics:
            raise InvalidSpec("network", f"machine {self.name!r} has no network adapter")
        changes = []
        for nic in nics:
            old = nic.connectable
            nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                connected=enabled,
                startConnected=enabled,
                allowGuestControl=bool(old.allowGuestControl) if old is not None else True,
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        self._reconfigure("set_network", vim.vm.ConfigSpec(deviceChange=changes))

    def network_connected(self) -> bool | None:
        """Whether vSphere has the VM's network adapters connected (None: it has none)."""
        nics = self._nics()
        if not nics:
            return None
        return all(bool(n.connectable and n.connectable.connected) for n in nics)

    # -- destroy -----------------------------------------------------------------------------
    @property
    def managed(self) -> bool:
        return SPEC_KEY in self._extra_config()

    def _do_destroy_adopted(self, timeout: float, delete_disks: bool) -> None:
        """A VM vmctl did not create is unregistered: its files (disks, snapshots) stay on the
        datastore. ``delete_disks``: destroyed as vSphere does it, with every file of the VM."""
        if self._get_state() is State.SUSPENDED:
            self._do_poweroff(timeout)
        if delete_disks:
            self._task("destroy", lambda vm: vm.Destroy_Task(), timeout)
        else:
            self._call("destroy", lambda vm: vm.UnregisterVM())

    def _do_destroy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(5.0, deadline - time.monotonic())

        if self._get_state() is State.SUSPENDED:
            self._do_poweroff(left())
        created_here = SPEC_KEY in self._extra_config()
        if self._props(["snapshot.rootSnapshotList"]).get("snapshot.rootSnapshotList"):
            # Consolidates snapshot deltas into the VM's own disk; the shared base is not touched.
            self._task("destroy", lambda vm: vm.RemoveAllSnapshots_Task(consolidate=True), left())
        p = self._props(["config.files.vmPathName", "config.hardware.device"])
        vm_dir = _datastore_dir(str(p.get("config.files.vmPathName") or ""))
        detach = [
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=disk)
            for disk in p.get("config.hardware.device") or ()
            if isinstance(disk, vim.vm.device.VirtualDisk) and _chain_leaves(disk.backing, vm_dir)
        ]
        if detach:
            # Destroy deletes a VM's disks; one whose chain reaches outside the VM's directory (a
            # delta over a shared base image) is detached first, its own files go with the directory.
            self._reconfigure("destroy", vim.vm.ConfigSpec(deviceChange=detach), left())
        self._task("destroy", lambda vm: vm.Destroy_Task(), left())
        if created_here and vm_dir is not None and vm_dir[1]:
            self.hypervisor.delete_datastore_path(vm_dir[0], vm_dir[1], left())


def _datastore_dir(path: str) -> tuple[str, str] | None:
    """``[ds] dir/vm.vmx`` -> (``ds``, ``dir``)."""
    if not path.startswith("[") or "]" not in path:
        return None
    datastore, rest = path[1:].split("]", 1)
    rest = rest.strip()
    directory = rest.rsplit("/", 1)[0] if "/" in rest else ""
    return datastore, directory


def _chain_leaves(backing: Any, vm_dir: tuple[str, str] | None) -> bool:
    """Whether a disk's backing chain has a file outside the VM's directory."""
    while backing is not None:
        name = getattr(backing, "fileName", None)
        if name:
            where = _datastore_dir(str(name))
            if vm_dir is None or where != vm_dir:
                return True
        backing = getattr(backing, "parent", None)
    return False
