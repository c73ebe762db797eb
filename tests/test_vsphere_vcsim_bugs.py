"""The vcsim 0.24.2 bugs the vSphere backend must survive, each shown on the unpatched server and
then shown harmless through vmctl. (The ``test_vcsim_*`` tests pin the bugs down: if a newer vcsim
fixes one, its test fails and says which workaround may go.)"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

import vmctl
from tests.vcsim import Vcsim, vcsim_fixture
from vmctl import State

vcsim = vcsim_fixture(vms=1)


@pytest.fixture
def hv(vcsim: Vcsim, request: pytest.FixtureRequest) -> Iterator[Any]:
    conn = vcsim.connect(folder=f"bugs/{request.node.name[:40]}")
    try:
        yield conn
    finally:
        for vm in conn.machines():
            vm.destroy()
        conn.close()


@pytest.fixture
def vm(hv: Any, tmp_path: Path) -> Any:
    disk = tmp_path / "base.img"
    disk.write_bytes(b"\0" * 4096)
    return hv.create(vmctl.MachineSpec(name="bug", disk=disk))


# -- reading vm.snapshot on a VM without snapshots drops the connection --------------------------
def test_vcsim_drops_the_connection_on_an_unset_snapshot_property(vm: Any) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        _ = vm.ref.snapshot


def test_snapshot_list_of_a_vm_without_snapshots(vm: Any) -> None:
    assert vm.snapshots() == []
    assert vm.state is State.STOPPED  # the connection is still fine


# -- a snapshot's revert/remove task names the snapshot as its entity ----------------------------
def test_vcsim_snapshot_tasks_break_pyvmomis_wait_for_task(vm: Any) -> None:
    vm.snapshot("s1")
    (node, _parent) = vm._snapshot_nodes()[0]
    with pytest.raises(TypeError):
        WaitForTask(node.snapshot.RevertToSnapshot_Task())


def test_revert_and_delete_wait_on_the_task_state(vm: Any) -> None:
    vm.snapshot("s1")
    vm.snapshot("s2")
    vm.revert("s1")
    vm.delete_snapshot("s2")
    assert [s.name for s in vm.snapshots()] == ["s1"]


# -- QueryPerfCounter crashes; quickStats' CPU, memory and uptime stay unset ---------------------
def test_vcsim_crashes_on_query_perf_counter(hv: Any) -> None:
    pm = hv.content.perfManager
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        pm.QueryPerfCounter([1])


def test_vcsim_leaves_quick_stats_unset(vm: Any) -> None:
    vm.start()
    stats = vm._props(["summary.quickStats"])["summary.quickStats"]
    assert stats.overallCpuUsage is None and stats.hostMemoryUsage is None and stats.uptimeSeconds is None


def test_usage_comes_from_the_performance_manager(vm: Any) -> None:
    vm.start()
    usage = vm.usage()
    assert usage.cpu_seconds is not None and usage.cpu_seconds > 0
    assert usage.memory_bytes is not None and usage.memory_bytes > 0  # mem.consumed, not quickStats


# -- RebootGuest is not implemented ------------------------------------------------------------
def test_missing_reboot_guest_is_unsupported(vm: Any) -> None:
    from tests.contract.harness_vsphere import set_tools_running

    vm.start()
    set_tools_running(vm)
    with pytest.raises(vmctl.Unsupported):
        vm.restart(hard=False, timeout=1)


# -- vcsim is looser than vSphere: vmctl's own rules hold ---------------------------------------
def test_vcsim_suspends_a_powered_off_vm(vm: Any, hv: Any) -> None:
    hv.session.wait_task(hv.session.invoke("suspend", vm.ref.SuspendVM_Task), 10, "suspend")
    assert vm.state is State.SUSPENDED


def test_suspend_from_stopped_is_refused(vm: Any) -> None:
    with pytest.raises(vmctl.InvalidState):
        vm.suspend()
    assert vm.state is State.STOPPED


def test_vcsim_shuts_down_a_guest_without_tools(vm: Any) -> None:
    vm.start()
    vm.ref.ShutdownGuest()
    assert vm.state is State.STOPPED


def test_stop_without_tools_sends_nothing(vm: Any) -> None:
    vm.start()
    with pytest.raises(vmctl.BackendError, match="VMware Tools"):
        vm.stop(timeout=1)
    assert vm.state is State.RUNNING


# -- faults carry Go type names as messages ----------------------------------------------------
def test_vcsim_fault_messages_are_go_type_names(vm: Any, hv: Any) -> None:
    task = hv.session.invoke("poweroff", vm.ref.PowerOffVM_Task)
    with pytest.raises(vim.fault.InvalidPowerState) as err:
        hv.session.wait_task(task, 10, "poweroff")
    assert err.value.msg == "*types.InvalidPowerState"


def test_server_faults_map_by_class(vm: Any) -> None:
    with pytest.raises(vmctl.InvalidState) as err:
        vm._do_poweroff(10)  # past vmctl's own check: the server's InvalidPowerState
    assert err.value.state is State.STOPPED


# -- a revert leaves the power state alone ------------------------------------------------------
def test_vcsim_revert_keeps_the_power_state(vm: Any, hv: Any) -> None:
    vm.snapshot("cold")
    vm.start()
    (node, _parent) = vm._snapshot_nodes()[0]
    hv.session.wait_task(hv.session.invoke("revert", node.snapshot.RevertToSnapshot_Task), 10, "revert")
    assert vm.state is State.RUNNING  # real vSphere would have powered it off


def test_revert_ends_in_the_snapshots_power_state(vm: Any) -> None:
    vm.snapshot("cold")
    vm.start()
    vm.snapshot("warm")
    vm.revert("cold")
    assert vm.state is State.STOPPED
    vm.revert("warm")
    assert vm.state is State.RUNNING


# -- removing a current snapshot that has no parent panics the server ---------------------------
def test_deleting_the_only_snapshot_works(vm: Any) -> None:
    vm.snapshot("only")
    vm.delete_snapshot("only")
    assert vm.snapshots() == []


def test_a_crashing_snapshot_removal_is_a_clear_error_and_leaves_no_hang(vm: Any, hv: Any) -> None:
    vm.snapshot("root")
    vm.snapshot("child")
    vm.revert("root")  # root is current and has no parent
    with pytest.raises(vmctl.BackendError, match=r"vcsim 0\.24\.2"):
        vm.delete_snapshot("root", timeout=5)
    assert [s.name for s in vm.snapshots()] == ["root", "child"]  # nothing changed, and we still talk
    stuck = [
        task
        for task in hv.session.props(hv.content.taskManager, ["recentTask"]).get("recentTask", [])
        if hv.session.props(task, ["info.descriptionId", "info.state"])
        == {"info.descriptionId": "VirtualMachineSnapshot.removeSnapshot", "info.state": "running"}
    ]
    assert stuck, "the crashed removal leaves a task running forever"
    with pytest.raises(vmctl.OperationTimeout):
        hv.session.wait_task(stuck[-1], 0.5, "remove snapshot")


# -- CreateVM accepts a duplicate name in a folder ----------------------------------------------
def test_vcsim_accepts_duplicate_vm_names(vcsim: Vcsim, hv: Any) -> None:
    folder = hv.content.rootFolder.childEntity[0].vmFolder
    pool = hv.content.rootFolder.childEntity[0].hostFolder.childEntity[0].resourcePool
    refs = []
    for _ in range(2):
        config = vim.vm.ConfigSpec(name="dup-raw", files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"))
        refs.append(hv.session.run_task("create", lambda c=config: folder.CreateVM_Task(config=c, pool=pool), 10))
    try:
        assert refs[0]._moId != refs[1]._moId
    finally:
        for ref in refs:
            hv.session.run_task("destroy", ref.Destroy_Task, 10)


def test_concurrent_creates_of_one_name_keep_one(vcsim: Vcsim, tmp_path: Path) -> None:
    disk = tmp_path / "race.img"
    disk.write_bytes(b"\3" * 8192)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def racer() -> None:
        conn = vcsim.connect(folder="race")
        try:
            barrier.wait(10)
            conn.create(vmctl.MachineSpec(name="racer", disk=disk))
            results.append("created")
        except vmctl.MachineExists:
            results.append("exists")
        finally:
            conn.close()

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    conn = vcsim.connect(folder="race")
    try:
        assert sorted(results) == ["created", "exists", "exists", "exists"]
        assert [m.name for m in conn.machines()] == ["racer"]
        assert len([ref for ref, p in conn._vms() if p["name"] == "racer"]) == 1
    finally:
        for m in conn.machines():
            m.destroy()
        conn.close()
