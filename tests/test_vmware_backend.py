"""The vmware backend's own quirks, against the vmrun simulator (and small fake vmruns).

What the contract suite does not see: linked clones and base VMs, how vmrun is called (argv,
locale, timeouts, no passwords), how VMware's files say SUSPENDED and CRASHED, and Player.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

import vmctl
from tests.contract.harness import wait_until
from tests.contract.harness_vmware import fake_vmdk, load_simulator, make_vmrun, vmx_processes
from vmctl import State
from vmctl_vmware._machine import VmwareMachine
from vmctl_vmware._vmx import VmxFile


@dataclass
class Setup:
    tmp: Path
    home: Path
    vmrun: Path
    vm_dir: Path
    disk: Path
    sim: ModuleType
    opened: list[vmctl.Hypervisor]

    def connect(self, product: str = "ws", **options: Any) -> vmctl.Hypervisor:
        hv = vmctl.connect("vmware", product=product, vmrun=options.pop("vmrun", self.vmrun), vm_dir=self.vm_dir)
        self.opened.append(hv)
        return hv

    def calls(self) -> list[dict[str, Any]]:
        log = self.home / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def guest(self, vm: vmctl.Machine) -> dict[str, Any]:
        assert isinstance(vm, VmwareMachine)
        view: dict[str, Any] = self.sim.guest_view(self.home, vm.vmx)
        return view


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(
        tmp=tmp_path,
        home=tmp_path / "home",
        vmrun=make_vmrun(tmp_path / "bin", tmp_path / "home"),
        vm_dir=tmp_path / "vms",
        disk=fake_vmdk(tmp_path / "base.vmdk"),
        sim=load_simulator(),
        opened=[],
    )
    try:
        yield s
    finally:
        for hv in s.opened:
            for vm in hv.machines():
                try:
                    vm.destroy()
                except vmctl.VmctlError:
                    pass
            hv.close()
        for proc in vmx_processes(str(tmp_path)):
            proc.kill()


def fake_vmrun(path: Path, body: str) -> Path:
    """A stand-in vmrun written in Python (``argv`` holds the arguments)."""
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\nargv = sys.argv[1:]\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def boot(env: Setup, vm: vmctl.Machine) -> None:
    vm.start()
    wait_until(lambda: env.guest(vm)["ready"], 10, "the simulated guest to boot")


# -- creation: linked clones of a base VM -----------------------------------------------------
def test_machines_are_linked_clones_of_one_base_vm(env: Setup) -> None:
    before = env.disk.read_bytes()
    hv = env.connect()
    a = hv.create(vmctl.MachineSpec(name="a", disk=env.disk))
    b = hv.create(vmctl.MachineSpec(name="b", disk=env.disk))
    bases = list((env.vm_dir / ".bases").glob("*/base.vmx"))
    assert len(bases) == 1, "one base VM per base disk"
    base = bases[0]
    assert VmxFile.load(base).get("scsi0:0.fileName") == str(env.disk), "the base VM names the disk where it is"
    clones = [c["argv"] for c in env.calls() if c["argv"][2] == "clone"]
    assert len(clones) == 2
    for argv, name in zip(clones, ["a", "b"], strict=True):
        assert argv[3] == str(base) and Path(argv[4]).name == f"{name}.vmx"
        assert argv[5:] == ["linked", "-snapshot=vmctl-base", f"-cloneName={name}"]
    snapshots_of_base = [c for c in env.calls() if c["argv"][2] == "snapshot" and c["argv"][3] == str(base)]
    assert len(snapshots_of_base) == 1, "the base snapshot is taken once"
    for vm in (a, b):
        assert isinstance(vm, VmwareMachine)
        files = list(vm.directory.iterdir())
        assert all(f.stat().st_size < 4096 for f in files), "nothing of the base disk is copied"
        assert not any(f.read_bytes() == before for f in files)
        disk = vm.directory / (VmxFile.load(vm.vmx).get("scsi0:0.fileName") or "")
        assert str(env.disk) in disk.read_text(), "the clone's delta disk names the base disk as parent"
    a.destroy()
    b.destroy()
    assert base.exists() and env.disk.read_bytes() == before, "destroy never touches the base"
    assert sorted(p.name for p in env.vm_dir.iterdir()) == [".bases"]


def test_a_base_vmx_given_by_the_user_is_cloned_from(env: Setup) -> None:
    base_dir = env.tmp / "golden"
    base_dir.mkdir()
    base = base_dir / "golden.vmx"
    base.write_text(f'.encoding = "UTF-8"\ndisplayName = "golden"\nscsi0:0.fileName = "{env.disk}"\nmemsize = "64"\n')
    hv = env.connect()
    vm = hv.create(vmctl.MachineSpec(name="g1", disk=base, memory_mib=300))
    hv.create(vmctl.MachineSpec(name="g2", disk=base))
    assert isinstance(vm, VmwareMachine)
    listed = subprocess.run([env.vmrun, "listSnapshots", base], capture_output=True, text=True, timeout=30, check=True)
    assert listed.stdout == "Total snapshots: 1\nvmctl-base\n", "the snapshot is taken once, on the user's VM"
    assert VmxFile.load(vm.vmx).get("memsize") == "300"
    assert not (env.vm_dir / ".bases").exists() or not list((env.vm_dir / ".bases").glob("*/base.vmx"))
    boot(env, vm)
    vm.destroy()
    assert base.exists()
    with pytest.raises(vmctl.InvalidSpec):
        hv.create(vmctl.MachineSpec(name="g3", disk=base, overlay=False))
    base.write_text(base.read_text() + 'encryption.keySafe = "vmware:key/list/..."\n')
    with pytest.raises(vmctl.Unsupported, match="encrypted"):
        hv.create(vmctl.MachineSpec(name="g4", disk=base))


def test_specs_vmware_cannot_run_are_refused_before_anything_is_made(env: Setup) -> None:
    hv = env.connect()
    kernel = env.tmp / "vmlinuz"
    kernel.write_bytes(b"k")
    qcow = env.tmp / "disk.qcow2"
    qcow.write_bytes(b"q")
    with pytest.raises(vmctl.Unsupported, match="kernel"):
        hv.create(vmctl.MachineSpec(name="k", disk=env.disk, kernel=kernel))
    with pytest.raises(vmctl.InvalidSpec, match="vmdk"):
        hv.create(vmctl.MachineSpec(name="q", disk=qcow))
    forwards = vmctl.Network(port_forwards=[vmctl.PortForward(host_port=2222, guest_port=22)])
    with pytest.raises(vmctl.Unsupported, match="port forwards"):
        hv.create(vmctl.MachineSpec(name="p", disk=env.disk, network=forwards))
    with pytest.raises(vmctl.Unsupported, match="Player"):
        env.connect("player").create(vmctl.MachineSpec(name="o", disk=env.disk))
    assert hv.machines() == [] and env.calls() == []


# -- how vmrun is called ---------------------------------------------------------------------
def test_every_call_is_an_argv_with_the_product_and_c_locale_and_no_password(
    env: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    hv = env.connect("fusion")
    vm = hv.create(vmctl.MachineSpec(name="f", disk=env.disk, network=vmctl.Network()))
    boot(env, vm)
    vm.set_network(False)
    vm.snapshot("s")
    vm.suspend()
    vm.start()
    assert vm.stop(timeout=10)
    vm.destroy()
    calls = env.calls()
    assert {c["argv"][2] for c in calls} >= {"clone", "start", "disconnectNamedDevice", "snapshot", "suspend", "stop"}
    for call in calls:
        assert call["argv"][:2] == ["-T", "fusion"]
        assert call["LANG"] == "C" and call["LC_ALL"] == "C"
        assert not {"-gu", "-gp", "-vp", "-p", "-u"} & set(call["argv"])


def test_a_hanging_vmrun_times_out_and_is_killed(env: Setup) -> None:
    pids = env.tmp / "pids"
    hang = fake_vmrun(
        env.tmp / "hang-vmrun",
        f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "if argv[2] == 'list':\n    print('Total running VMs: 0')\n    sys.exit(0)\n"
        "time.sleep(3600)",
    )
    hv = env.connect(vmrun=hang)
    vm = hv.create(vmctl.MachineSpec(name="h", disk=env.disk, overlay=False))
    started = time.monotonic()
    with pytest.raises(vmctl.OperationTimeout):
        vm.start(timeout=1)
    assert time.monotonic() - started < 10
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_error_lines_map_to_vmctl_errors_even_with_exit_status_0(env: Setup) -> None:
    liar = fake_vmrun(
        env.tmp / "liar-vmrun",
        "if argv[2] == 'list':\n    print('Total running VMs: 0')\n"
        "elif argv[2] == 'listSnapshots':\n    print('Total snapshots: 0')\n"
        "elif argv[2] == 'start':\n    print('Error: The virtual machine is not powered on: ' + argv[3])\n"
        "elif argv[2] == 'snapshot':\n    print('Error: Insufficient permissions in host operating system')\n"
        "    sys.exit(255)\n",
    )
    hv = env.connect(vmrun=liar)
    vm = hv.create(vmctl.MachineSpec(name="l", disk=env.disk, overlay=False))
    with pytest.raises(vmctl.InvalidState) as state_err:
        vm.start()
    assert state_err.value.state is State.STOPPED
    with pytest.raises(vmctl.BackendError) as err:
        vm.snapshot("s")
    assert err.value.status == 255 and "Insufficient permissions" in str(err.value)
    assert err.value.command is not None and list(err.value.command)[1:4] == ["-T", "ws", "snapshot"]


def test_vmrun_is_found_or_reported_unavailable(env: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = vmctl.registry.get_provider("vmware")
    monkeypatch.delenv("VMCTL_VMRUN", raising=False)
    monkeypatch.setenv("PATH", str(env.tmp / "empty"))
    import vmctl_vmware._vmrun as vmrun_module

    monkeypatch.setattr(vmrun_module, "STANDARD_LOCATIONS", ())
    info = provider.info()
    assert not info.usable and info.hint and "VMCTL_VMRUN" in info.hint
    with pytest.raises(vmctl.BackendUnavailable):
        vmctl.connect("vmware")
    with pytest.raises(vmctl.BackendUnavailable, match="not an executable"):
        vmctl.connect("vmware", vmrun=env.tmp / "nothing-here")
    monkeypatch.setenv("VMCTL_VMRUN", str(env.vmrun))
    assert provider.info().usable
    assert vmctl.connect("vmware", vm_dir=env.vm_dir).machines() == []
    monkeypatch.setenv("PATH", str(env.vmrun.parent))
    monkeypatch.delenv("VMCTL_VMRUN")
    assert provider.info().usable
    with pytest.raises(vmctl.InvalidSpec):
        vmctl.connect("vmware", product="esx")


# -- state from VMware's files ---------------------------------------------------------------
def test_poweroff_from_suspended_deletes_the_saved_state(env: Setup) -> None:
    vm = env.connect().create(vmctl.MachineSpec(name="s", disk=env.disk))
    assert isinstance(vm, VmwareMachine)
    boot(env, vm)
    vm.suspend()
    assert (vm.directory / "s.vmss").is_file() and VmxFile.load(vm.vmx).get("checkpoint.vmState") == "s.vmss"
    vm.poweroff()
    assert vm.state is State.STOPPED
    assert not (vm.directory / "s.vmss").exists() and VmxFile.load(vm.vmx).get("checkpoint.vmState") is None
    boot(env, vm)
    assert env.guest(vm)["boots"] == 2, "the next start boots afresh"


def test_a_crash_is_read_from_clean_shutdown_and_cleared_by_poweroff(env: Setup) -> None:
    vm = env.connect().create(vmctl.MachineSpec(name="c", disk=env.disk))
    assert isinstance(vm, VmwareMachine)
    boot(env, vm)
    pid = vm.pid
    assert pid is not None and str(vm.vmx) in psutil.Process(pid).cmdline()
    psutil.Process(pid).kill()
    assert vm.wait_for(State.CRASHED, 10) is State.CRASHED
    assert VmxFile.load(vm.vmx).get("cleanShutdown") == "FALSE"
    vm.poweroff()
    assert vm.state is State.STOPPED and VmxFile.load(vm.vmx).get("cleanShutdown") == "TRUE"


def test_pause_is_remembered_for_other_handles(env: Setup) -> None:
    hv = env.connect()
    vm = hv.create(vmctl.MachineSpec(name="p", disk=env.disk))
    boot(env, vm)
    vm.pause()
    other = env.connect().machine("p")
    seen = [other.state]
    other.suspend()
    seen.append(vm.state)
    vm.start()
    seen.append(other.state)
    assert seen == [State.PAUSED, State.SUSPENDED, State.RUNNING]


def test_usage_comes_from_the_vmware_vmx_process(env: Setup) -> None:
    vm = env.connect().create(vmctl.MachineSpec(name="u", disk=env.disk))
    assert isinstance(vm, VmwareMachine)
    assert vm.usage().cpu_seconds is None
    boot(env, vm)
    pid = vm.pid
    assert pid == env.guest(vm)["pid"]
    proc = psutil.Process(pid)
    assert os.path.basename(proc.cmdline()[0]) == "vmware-vmx"
    first = vm.usage()
    assert first.memory_bytes is not None and first.memory_bytes > 0
    assert first.cpu_seconds is not None
    wait_until(lambda: (vm.usage().cpu_seconds or 0) > (first.cpu_seconds or 0), 10, "CPU time to grow")
    vm.poweroff()
    assert vm.usage().cpu_seconds is None and vm.pid is None


# -- soft power operations need VMware Tools -------------------------------------------------
def test_without_tools_stop_is_forced_and_reboot_becomes_a_reset(env: Setup) -> None:
    env.sim.set_profile(env.home, "t", tools=False)
    vm = env.connect().create(vmctl.MachineSpec(name="t", disk=env.disk))
    boot(env, vm)
    assert vm.restart(hard=False, timeout=5) is False
    assert env.guest(vm)["boots"] == 2 and env.guest(vm)["presses"] == 0
    started = time.monotonic()
    assert vm.stop(timeout=2) is False
    assert vm.state is State.STOPPED and time.monotonic() - started < 15


def test_a_reboot_the_guest_ignores_times_out_into_a_reset(env: Setup) -> None:
    env.sim.set_profile(env.home, "r", ignore_power_button=True)
    vm = env.connect().create(vmctl.MachineSpec(name="r", disk=env.disk))
    boot(env, vm)
    started = time.monotonic()
    assert vm.restart(hard=False, timeout=2) is False
    assert time.monotonic() - started < 15
    view = env.guest(vm)
    assert view["boots"] == 2 and view["presses"] == 1
    vm.poweroff()


def test_vmrun_refusals_map_to_vmctl_errors(env: Setup) -> None:
    vm = env.connect().create(vmctl.MachineSpec(name="m", disk=env.disk, network=vmctl.Network()))
    assert isinstance(vm, VmwareMachine)
    with pytest.raises(vmctl.InvalidState) as err:
        vm._do_pause(10)  # bypass the state check: vmrun's own "not powered on" must map too
    assert err.value.state is State.STOPPED
    with pytest.raises(vmctl.InvalidState):
        vm._do_set_network(True)
    boot(env, vm)
    with pytest.raises(vmctl.InvalidState):
        vm._do_start(10)
    with pytest.raises(vmctl.SnapshotNotFound):
        vm._do_revert(vmctl.Snapshot(name="ghost", created=0, has_memory=False), 10)
    vm.poweroff()
    vm.vmx.unlink()
    with pytest.raises(vmctl.MachineNotFound):
        vm._do_start(10)


# -- Player ------------------------------------------------------------------------------------
def test_player_machines_run_on_the_disk_and_refuse_snapshots_and_pause(env: Setup) -> None:
    hv = env.connect("player")
    caps = hv.capabilities
    assert not caps.pause and not caps.snapshots and not caps.live_snapshots and caps.suspend
    vm = hv.create(vmctl.MachineSpec(name="pl", disk=env.disk, overlay=False, network=vmctl.Network()))
    assert isinstance(vm, VmwareMachine)
    assert VmxFile.load(vm.vmx).get("scsi0:0.fileName") == str(env.disk)
    boot(env, vm)
    for call in (vm.pause, vm.snapshots, lambda: vm.snapshot("s")):
        with pytest.raises(vmctl.Unsupported):
            call()
    with pytest.raises(vmctl.Unsupported, match="-T player"):
        vm._do_pause(10)  # and if asked anyway, vmrun's refusal maps to Unsupported
    vm.set_network(False)
    assert env.guest(vm)["link_up"] is False
    vm.suspend()
    vm.start()
    assert vm.stop(timeout=10) is True
    disk = env.disk.read_bytes()
    vm.destroy()
    assert env.disk.read_bytes() == disk, "destroy leaves the disk of an overlay=False machine alone"
    assert [c for c in env.calls() if c["argv"][2] in ("clone", "snapshot", "listSnapshots")] == []
    assert len([c for c in env.calls() if c["argv"][2] == "pause"]) == 1, "only the forced one above"


def test_the_recorded_spec_survives_a_moved_disk_but_not_a_tampered_tag(env: Setup) -> None:
    hv = env.connect()
    hv.create(vmctl.MachineSpec(name="rec", disk=env.disk, overlay=False))
    moved = env.disk.with_name("moved.vmdk")
    env.disk.rename(moved)
    try:
        assert env.connect().machine("rec").spec.disk == env.disk
        store = hv.store  # type: ignore[attr-defined]
        spec = dict(store.read("rec")["spec"])
        store.update("rec", spec={**spec, "shared_dirs": {"x y": str(env.tmp)}})
        with pytest.raises(vmctl.InvalidSpec, match="tag 'x y'"):
            _ = env.connect().machine("rec").spec
    finally:
        moved.rename(env.disk)


# -- what the real tools print and write -----------------------------------------------------
def test_tools_state_and_guest_address_read_vmruns_real_forms(env: Setup) -> None:
    vm = env.connect().create(vmctl.MachineSpec(name="ip", disk=env.disk, network=vmctl.Network()))
    assert isinstance(vm, VmwareMachine)
    assert vm.tools_state() == "unknown", "vmrun prints 'unknown' and exits -2 for a powered-off VM"
    with pytest.raises(vmctl.InvalidState):
        vm.guest_address()
    env.sim.set_profile(env.home, "ip", tools=False)
    vm.start()
    assert vm.tools_state() == "installed"
    with pytest.raises(vmctl.BackendError) as err:
        vm.guest_address()
    assert err.value.code is vmctl.ErrorCode.GUEST
    env.sim.set_profile(env.home, "ip")
    address = vm.guest_address(wait=True, timeout=30)
    assert address.startswith("192.168.") and vm.tools_state() == "running"
    vm.poweroff()


def test_a_fake_vmrun_printing_unknown_or_garbage_is_read_or_refused(env: Setup) -> None:
    vmrun = fake_vmrun(
        env.tmp / "fake-vmrun",
        "verb = argv[2]\n"
        "if verb == 'checkToolsState': print('unknown'); sys.exit(254)\n"
        "if verb == 'getGuestIPAddress': print('unknown'); sys.exit(0)\n"
        "print('Total running VMs: 0')\n",
    )
    env.connect().create(vmctl.MachineSpec(name="f", disk=env.disk, overlay=False))
    fake = env.connect(vmrun=vmrun).machine("f")
    assert isinstance(fake, VmwareMachine)
    assert fake.tools_state() == "unknown"
    with pytest.raises(vmctl.BackendError, match="not an IP address") as err:
        fake.guest_address()
    assert err.value.code is vmctl.ErrorCode.PROTOCOL


def test_a_base_vmx_in_a_legacy_charset_with_unquoted_values_is_cloned_faithfully(env: Setup) -> None:
    base_dir = env.tmp / "legacy"
    base_dir.mkdir()
    base = base_dir / "legacy.vmx"
    data = (
        '.encoding = "windows-1252"\n# written by hand\n'
        f'displayName = "Café"\nscsi0:0.fileName = "{env.disk}"\nmemsize = 64   # MB\nannotation = "naïve"\n'
    ).encode("cp1252")
    base.write_bytes(data)
    vm = env.connect().create(vmctl.MachineSpec(name="c1", disk=base, memory_mib=300))
    assert isinstance(vm, VmwareMachine)
    clone = vm.vmx.read_bytes()
    assert b"\xef\xbf\xbd" not in clone, "no character became U+FFFD"
    config = VmxFile.load(vm.vmx)
    assert config.get("annotation") == "naïve" and config.get("memsize") == "300"
    assert sum(1 for key in config.keys() if key.lower() == "memsize") == 1
    assert base.read_bytes() == data, "the user's base VM file is not rewritten"
    boot(env, vm)
    vm.poweroff()


def test_a_base_vmx_in_an_unknown_charset_is_refused_untouched(env: Setup) -> None:
    base = env.tmp / "odd.vmx"
    data = f'.encoding = "x-unknown"\nscsi0:0.fileName = "{env.disk}"\n'.encode()
    base.write_bytes(data)
    hv = env.connect()
    with pytest.raises(vmctl.BackendError, match="x-unknown"):
        hv.create(vmctl.MachineSpec(name="u", disk=base))
    assert base.read_bytes() == data and hv.machines() == [] and env.calls() == []
