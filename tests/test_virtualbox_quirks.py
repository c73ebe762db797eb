"""The VirtualBox backend against VBoxManage's quirks, reproduced by the VBoxManage simulator.

Each test turns on one quirk of the real tool (see ``tests/simulators/vboxmanage_sim.py`` for
where each was checked) and shows that the backend copes: transient lock errors retried with
bounded backoff, errors printed with exit status 0, ``startvm`` exiting non-zero after success,
slow transitions, error codes mapped to vmctl's errors, multiattach overlays, and cleanup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import vmctl
from tests.contract.harness import wait_until
from tests.contract.harness_virtualbox import load_simulator, write_wrapper
from vmctl import State

pytestmark = pytest.mark.timeout(120)


@dataclass
class Sim:
    sim: ModuleType
    home: Path
    vboxmanage: Path
    base_folder: Path
    disk: Path
    hv: vmctl.Hypervisor

    def connect(self, **options: object) -> vmctl.Hypervisor:
        defaults: dict[str, object] = {
            "vboxmanage": str(self.vboxmanage),
            "transport": "vboxmanage",
            "base_folder": str(self.base_folder),
            "retry_delay": 0.01,
        }
        defaults.update(options)
        return vmctl.connect("virtualbox", **defaults)

    def spec(self, name: str, **kw: object) -> vmctl.MachineSpec:
        return vmctl.MachineSpec(name=name, disk=self.disk, **kw)  # type: ignore[arg-type]

    def fault(self, kind: str, verb: str = "*", sub: str | None = None, **options: object) -> None:
        self.sim.add_fault(self.home, kind, verb, sub, **options)

    def guest(self, name: str) -> dict[str, object]:
        view = self.sim.guest_view(self.home, name)
        assert view is not None
        return dict(view)

    def vbm(self, *args: str) -> tuple[int, str, str]:
        import subprocess

        p = subprocess.run([str(self.vboxmanage), *args], capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout, p.stderr


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    module = load_simulator()
    home = tmp_path / "home"
    wrapper = write_wrapper(tmp_path / "bin" / "VBoxManage", home)
    disk = tmp_path / "base.vdi"
    disk.write_bytes(os.urandom(256 * 1024))
    base_folder = tmp_path / "vms"
    s = Sim(module, home, wrapper, base_folder, disk, hv=None)  # type: ignore[arg-type]
    s.hv = s.connect()
    try:
        yield s
    finally:
        module.clear_faults(home)
        for vm in s.hv.machines():
            try:
                vm.destroy()
            except vmctl.VmctlError:
                pass
        for pid in module.vm_processes(home):
            try:
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- transient lock errors ------------------------------------------------------------------------
def test_transient_lock_error_is_retried_with_backoff(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    vm = sim.hv.create(sim.spec("lock1"))
    vm.start()
    sim.fault("lock", "controlvm", "pause", count=3)
    caplog.set_level(logging.INFO, logger="vmctl.virtualbox")
    started = time.monotonic()
    vm.pause()
    assert vm.state is State.PAUSED
    retries = [r for r in caplog.records if "transient VirtualBox error" in r.getMessage()]
    assert len(retries) == 3
    assert "VBOX_E_INVALID_OBJECT_STATE" in retries[0].getMessage()
    assert time.monotonic() - started >= 0.01 + 0.02 + 0.04  # backoff doubles


def test_persistent_lock_error_gives_up_after_bounded_retries(sim: Sim) -> None:
    hv = sim.connect(retries=2)
    vm = hv.create(sim.spec("lock2"))
    vm.start()
    sim.fault("lock", "controlvm", "pause", count=None)
    with pytest.raises(vmctl.BackendError) as err:
        vm.pause()
    e = err.value
    assert e.code == "busy" and e.transient and e.native == "VBOX_E_INVALID_OBJECT_STATE"
    assert e.status == 1
    assert isinstance(e.command, list) and e.command[-2:] == ["lock2", "pause"]
    assert "already locked" in e.stderr and "(0x80bb0007)" in e.stderr
    sim.sim.clear_faults(sim.home)
    assert vm.state is State.RUNNING
    counted = sim.sim.Registry(sim.home).data["calls"]
    assert counted > 0


# -- errors on stderr with exit status 0 ------------------------------------------------------------
def test_error_with_exit_status_zero_is_an_error(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("exit0a"))
    vm.start()
    sim.fault("fail", "controlvm", "pause", exit=0, code="VBOX_E_VM_ERROR", text="The VM refused to pause")
    with pytest.raises(vmctl.BackendError) as err:
        vm.pause()
    assert err.value.status == 0
    assert err.value.code == "internal" and err.value.native == "VBOX_E_VM_ERROR"
    assert "The VM refused to pause" in str(err.value)
    assert vm.state is State.RUNNING


def test_machine_not_found_is_detected_even_with_exit_zero(sim: Sim) -> None:
    from vmctl_virtualbox._hypervisor import VirtualBoxHypervisor

    sim.fault("exit0", "showvminfo", count=None)
    code, out, errtext = sim.vbm("showvminfo", "ghost", "--machinereadable")
    assert code == 0 and out == "" and "VBOX_E_OBJECT_NOT_FOUND" in errtext
    assert isinstance(sim.hv, VirtualBoxHypervisor)
    with pytest.raises(vmctl.MachineNotFound):
        sim.hv.transport.info("ghost")


# -- startvm ----------------------------------------------------------------------------------------
def test_startvm_exiting_nonzero_after_success_counts_as_started(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("sv1"))
    sim.fault("startvm_nonzero", "startvm", count=1)
    vm.start()
    assert vm.state is State.RUNNING
    _, out, _ = sim.vbm("list", "runningvms")
    assert '"sv1"' in out


def test_startvm_that_really_fails_raises_and_leaves_the_machine_stopped(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("sv2"))
    sim.fault("fail", "startvm", code="VBOX_E_VM_ERROR", text="VT-x is not available (VERR_VMX_NO_VMX)")
    with pytest.raises(vmctl.BackendError, match="VERR_VMX_NO_VMX"):
        vm.start()
    assert vm.state is State.STOPPED


def test_slow_start_is_awaited_through_the_starting_state(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("slow1"))
    sim.fault("slow", "startvm", seconds=1.0)
    started = time.monotonic()
    vm.start()
    assert time.monotonic() - started >= 1.0
    assert vm.state is State.RUNNING


def test_transitional_state_reads_settle_or_report_unknown(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("slow2"))
    sim.fault("slow", "startvm", seconds=2.5)
    sim.vbm("startvm", "slow2", "--type", "headless")
    assert "starting" in sim.vbm("showvminfo", "slow2", "--machinereadable")[1]
    impatient = sim.connect(settle_timeout=0.2)
    assert impatient.machine("slow2").state is State.UNKNOWN
    assert vm.state is State.RUNNING  # the default handle waits for the state to settle


# -- error mapping -----------------------------------------------------------------------------------
def test_vbox_errors_map_to_vmctl_errors(sim: Sim) -> None:
    from vmctl_virtualbox._hypervisor import VirtualBoxHypervisor

    hv = sim.hv
    assert isinstance(hv, VirtualBoxHypervisor)
    t = hv.transport
    with pytest.raises(vmctl.MachineNotFound):
        t.info("nobody")
    vm = hv.create(sim.spec("map1"))
    with pytest.raises(vmctl.InvalidState):  # "Machine 'map1' is not currently running."
        t.control("map1", "pause")
    vm.start()
    vm.pause()
    with pytest.raises(vmctl.InvalidState) as err:  # VBOX_E_INVALID_VM_STATE from IConsole::Pause
        t.control("map1", "pause")
    assert err.value.native == "VBOX_E_INVALID_VM_STATE"  # type: ignore[attr-defined]
    with pytest.raises(vmctl.SnapshotNotFound):
        t.snapshot_restore("map1", "no-such-snapshot", 10)
    with pytest.raises(vmctl.BackendError) as berr:
        t.control("map1", "cpuexecutioncap", "250")
    assert berr.value.status == 2 and berr.value.command is not None
    # The machine layer fills in the real state of a mapped InvalidState.
    with pytest.raises(vmctl.InvalidState) as merr:
        vm._control("pause", "pause")  # type: ignore[attr-defined]
    assert merr.value.state is State.PAUSED


# -- overlays ---------------------------------------------------------------------------------------
def test_overlay_is_a_multiattach_differencing_image_never_a_copy(sim: Sim) -> None:
    before = sha(sim.disk)
    a = sim.hv.create(sim.spec("ov1"))
    b = sim.hv.create(sim.spec("ov2"))
    for vm in (a, b):
        info = vm.info()  # type: ignore[attr-defined]
        (disk_path,) = info.disks.values()
        assert Path(disk_path).parent == sim.base_folder / vm.name / "Snapshots"
        assert Path(disk_path) != sim.disk
        assert Path(disk_path).stat().st_size < sim.disk.stat().st_size // 10
        assert Path(info.cfg_file).parent == sim.base_folder / vm.name
    _, hdds, _ = sim.vbm("list", "hdds")
    assert f"Type:           multiattach\nLocation:       {sim.disk}" in hdds
    a.start()
    a.snapshot("s")
    a.destroy()
    b.destroy()
    assert sorted(os.listdir(sim.base_folder)) == []
    assert sha(sim.disk) == before


def test_overlay_false_attaches_the_image_and_destroy_never_deletes_it(sim: Sim) -> None:
    own = sim.disk.with_name("own.vdi")
    own.write_bytes(b"own disk" + bytes(1024))
    vm = sim.hv.create(vmctl.MachineSpec(name="noov", disk=own, overlay=False))
    info = vm.info()  # type: ignore[attr-defined]
    assert list(info.disks.values()) == [str(own)]
    vm.start()
    vm.snapshot("s1")
    vm.poweroff()
    vm.destroy()
    assert own.exists(), "unregistervm --delete must never reach the machine's own disk"
    with pytest.raises(vmctl.MachineNotFound):
        sim.hv.machine("noov")


def test_kernel_boot_is_unsupported(sim: Sim, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    with pytest.raises(vmctl.Unsupported, match="kernel"):
        sim.hv.create(vmctl.MachineSpec(name="k1", disk=sim.disk, kernel=kernel))
    assert "k1" not in sim.vbm("list", "vms")[1]


def test_failed_create_removes_the_half_made_machine(sim: Sim) -> None:
    sim.fault("fail", "storageattach", code="VBOX_E_FILE_ERROR", text="Could not open the medium")
    with pytest.raises(vmctl.BackendError, match="Could not open the medium"):
        sim.hv.create(sim.spec("half"))
    assert '"half"' not in sim.vbm("list", "vms")[1]
    assert not (sim.base_folder / "half").exists()
    sim.hv.create(sim.spec("half")).destroy()


def test_machines_not_made_by_vmctl_are_adopted_but_not_listed_as_vmctls(sim: Sim) -> None:
    rc, _, _ = sim.vbm("createvm", "--name", "users-own", "--basefolder", str(sim.base_folder), "--register")
    assert rc == 0
    assert "users-own" not in [m.name for m in sim.hv.machines()]
    assert "users-own" in [m.name for m in sim.hv.machines(all=True)]
    own = sim.hv.machine("users-own")
    assert own.managed is False and own.spec.disk is None  # described by showvminfo: no disk yet
    with pytest.raises(vmctl.MachineExists):
        sim.hv.create(sim.spec("users-own"))
    sim.vbm("unregistervm", "users-own", "--delete")


# -- states ------------------------------------------------------------------------------------------
def test_poweroff_of_a_crashed_machine_reads_as_stopped_and_boots_afresh(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("crash1"))
    vm.start()
    pid = vm.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert vm.wait_for(State.CRASHED, 10) is State.CRASHED
    assert 'VMState="aborted"' in sim.vbm("showvminfo", "crash1", "--machinereadable")[1]
    vm.poweroff()
    assert vm.state is State.STOPPED
    boots = sim.guest("crash1")["boots"]
    vm.start()
    assert sim.guest("crash1")["boots"] == boots + 1  # type: ignore[operator]


def test_cpu_limit_uses_controlvm_when_running_and_modifyvm_when_stopped(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("cap1"))
    vm.set_cpu_limit(40)
    assert vm.info().cpu_cap == 40  # type: ignore[attr-defined]
    vm.start()
    vm.set_cpu_limit(10)
    assert vm.info().cpu_cap == 10  # type: ignore[attr-defined]
    assert sim.guest("cap1")["cpucap"] == 10
    vm.poweroff()
    # controlvm cpuexecutioncap changes the running session only, as in VirtualBox.
    assert vm.info().cpu_cap == 40  # type: ignore[attr-defined]


def test_pid_is_the_vm_process_named_in_vbox_log(sim: Sim) -> None:
    import psutil

    vm = sim.hv.create(sim.spec("pid1"))
    assert vm.pid is None
    vm.start()
    pid = vm.pid
    assert pid is not None
    uuid = vm.info().uuid  # type: ignore[attr-defined]
    assert uuid in " ".join(psutil.Process(pid).cmdline())
    log = sim.base_folder / "pid1" / "Logs" / "VBox.log"
    assert f"Process ID: {pid}" in log.read_text()
    # A stale log naming another process (a recycled pid) is not believed.
    log.write_text(log.read_text().replace(f"Process ID: {pid}", f"Process ID: {os.getpid()}"))
    assert vm.pid is None
    vm.poweroff()
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 5, "VM process gone")


def test_usage_falls_back_to_virtualbox_metrics_without_a_process(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = sim.hv.create(sim.spec("met1", memory_mib=300))
    vm.start()
    monkeypatch.setattr(type(vm), "_get_pid", lambda self: None)
    usage = vm.usage()
    assert usage.memory_bytes is not None and usage.memory_bytes >= 300 * 1024 * 1024
    assert usage.cpu_seconds is None


def test_simulated_vm_process_exits_when_the_simulator_forgets_it(sim: Sim) -> None:
    import psutil

    vm = sim.hv.create(sim.spec("orphan"))
    vm.start()
    pid = vm.pid
    assert pid is not None
    for f in (sim.home / "pids").iterdir():
        f.unlink()
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 5, "self-exit")
    assert vm.wait_for(State.CRASHED, 5) is State.CRASHED


def test_descriptions_with_shell_characters_survive_the_argv(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("argv1"))
    text = 'a b; $(touch /tmp/x) "quoted" \\ back'
    vm.snapshot("s1", description=text)
    (snap,) = vm.snapshots()
    assert snap.description == text and snap.has_memory is False


def test_simulated_guest_can_finish_a_job_and_power_itself_off(sim: Sim, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    sim.sim.set_guest_profile(sim.home, "job1", poweroff_after=0.5, files={"work": {"out/result.txt": "42\n"}})
    vm = sim.hv.create(sim.spec("job1", shared_dirs={"work": share}))
    vm.start()
    assert vm.wait_for(State.STOPPED, 10) is State.STOPPED
    assert (share / "out" / "result.txt").read_text() == "42\n"
    assert sim.guest("job1")["presses"] == 0


# -- the recorded spec ----------------------------------------------------------------------------
def test_the_spec_is_read_back_after_the_base_image_moved_and_checked_again(sim: Sim) -> None:
    share = sim.base_folder.parent / "share"
    share.mkdir()
    sim.hv.create(sim.spec("moved", shared_dirs={"data": share}))
    moved = sim.disk.with_name("elsewhere.vdi")
    sim.disk.rename(moved)
    try:
        spec = sim.connect().machine("moved").spec  # a fresh handle reads the extradata again
        assert spec.disk == sim.disk and spec.shared_dirs == {"data": share}
        with pytest.raises(vmctl.InvalidSpec):
            vmctl.MachineSpec.from_dict(spec.to_dict())  # what the backend used to read it with
        tampered = json.dumps({**spec.to_dict(), "shared_dirs": {"data,readonly=off": str(share)}})
        assert sim.vbm("setextradata", "moved", "vmctl/spec", tampered)[0] == 0
        with pytest.raises(vmctl.InvalidSpec, match="tag 'data,readonly=off'"):
            _ = sim.connect().machine("moved").spec
    finally:
        moved.rename(sim.disk)
    sim.connect().machine("moved").destroy()  # an unreadable spec does not keep a machine alive
    assert '"moved"' not in sim.vbm("list", "vms")[1]


# -- what the real tool prints (issue 18) -----------------------------------------------------------


def env_wrapper(sim: Sim, name: str, **env: str) -> Path:
    """A VBoxManage that runs the simulator with ``env`` set."""
    path = sim.vboxmanage.parent / name
    exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    path.write_text(f'#!/bin/sh\n{exports}exec "{sim.vboxmanage}" "$@"\n')
    path.chmod(0o755)
    return path


def test_non_utf8_locale_reproduces_virtualbox_7_0_printing_nothing(sim: Sim) -> None:
    sim.hv.create(sim.spec("loc1"))
    c_locale = env_wrapper(sim, "VBoxManage-C", LANG="C", LC_ALL="C")
    import subprocess

    listed = subprocess.run([str(c_locale), "list", "vms"], capture_output=True, timeout=30)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, b"", b"")
    assert subprocess.run([str(c_locale), "--version"], capture_output=True, timeout=30).stdout.startswith(b"7.0.")
    # vmctl's own locale gets the output; forcing the old LANG=C gets a clear error, not "no machine".
    assert "loc1" in sim.hv.transport.list_vms()  # type: ignore[attr-defined]
    with pytest.raises(vmctl.BackendError, match="printed nothing") as err:
        sim.connect(env={"LANG": "C", "LC_ALL": "C"}).transport.info("loc1")  # type: ignore[attr-defined]
    assert err.value.code == "protocol"


def test_c_locale_in_71_mode_turns_non_ascii_into_question_marks(sim: Sim) -> None:
    import subprocess

    utf8 = env_wrapper(sim, "VBoxManage-utf8", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    create = [str(utf8), "createvm", "--name", "Programación", "--basefolder", str(sim.base_folder), "--register"]
    assert subprocess.run(create, timeout=30).returncode == 0
    ascii_mode = env_wrapper(sim, "VBoxManage-ascii", LC_ALL="C", VBOXSIM_C_LOCALE="ascii")
    listed = subprocess.run([str(ascii_mode), "list", "vms"], capture_output=True, timeout=30)
    assert listed.stdout.startswith(b'"Programaci?n" {')
    named = subprocess.run([str(ascii_mode), "showvminfo", "Programación"], capture_output=True, timeout=30)
    assert named.returncode == 1 and named.stderr == b"VBoxManage: fatal error: RTR3Init: VERR_NO_TRANSLATION\n"
    assert "Programación" in sim.hv.transport.list_vms()  # type: ignore[attr-defined]
    subprocess.run([str(utf8), "unregistervm", "Programación", "--delete"], timeout=30, check=True)


def test_snapshot_fields_are_printed_unescaped_and_read_back(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("snapraw"))
    vm.snapshot("first", description="ends in a backslash \\")
    vm.snapshot("second", description='\\\\server\\share "quoted"')
    code, out, _ = sim.vbm("snapshot", "snapraw", "list", "--machinereadable")
    assert code == 0
    assert 'SnapshotDescription="ends in a backslash \\"\n' in out
    assert 'SnapshotDescription-1="\\\\server\\share "quoted""\n' in out
    snaps = vm.snapshots()
    assert [(s.name, s.description) for s in snaps] == [
        ("first", "ends in a backslash \\"),
        ("second", '\\\\server\\share "quoted"'),
    ]


def test_running_machine_prints_session_name_and_video_mode(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("vidmode"))
    vm.start()
    code, out, _ = sim.vbm("showvminfo", "vidmode", "--machinereadable")
    assert code == 0
    assert 'draganddrop="disabled"\nSessionName="headless"\nVideoMode="720,400,0"@0,0 1\nvrde="off"\n' in out
    assert vm.state is State.RUNNING
    vm.poweroff()
    _, out, _ = sim.vbm("showvminfo", "vidmode", "--machinereadable")
    assert "VideoMode" not in out and "SessionName" not in out


def test_state_change_time_has_milliseconds_and_no_z(sim: Sim) -> None:
    import re

    sim.hv.create(sim.spec("stime"))
    _, out, _ = sim.vbm("showvminfo", "stime", "--machinereadable")
    assert re.search(r'^VMStateChangeTime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}000000"$', out, re.M)


def test_savestate_refusal_has_the_real_form_and_maps_to_invalid_state(sim: Sim) -> None:
    vm = sim.hv.create(sim.spec("refuse"))
    vm.start()
    with sim.sim.locked_registry(sim.home) as reg:
        m = next(m for m in reg.machines.values() if m["name"] == "refuse")
        m["state"] = "stopping"
    code, _, err = sim.vbm("controlvm", "refuse", "savestate")
    assert (code, err) == (1, "VBoxManage: error: Machine in invalid state 12 -- stopping.\n")
    with pytest.raises(vmctl.InvalidState):
        sim.hv.transport.control("refuse", "savestate")  # type: ignore[attr-defined]
    with sim.sim.locked_registry(sim.home) as reg:
        next(m for m in reg.machines.values() if m["name"] == "refuse")["state"] = "running"


def test_missing_kernel_module_is_refused_at_connect(sim: Sim) -> None:
    broken = env_wrapper(sim, "VBoxManage-nodrv", VBOXSIM_NO_VBOXDRV="1")
    with pytest.raises(vmctl.BackendUnavailable, match="not properly set up") as err:
        sim.connect(vboxmanage=str(broken))
    assert "vboxdrv kernel module is not loaded" in err.value.reason
