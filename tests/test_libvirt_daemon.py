"""The libvirt backend against a real libvirtd (qemu:///system) with TCG test guests.

Events wake wait_for, usage of several running machines is one call, and a libvirtd restart
while a machine runs loses neither the connection (for the next call) nor the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import State
from vmctl.backend.ports import free_port

from .contract.harness import wait_until
from .contract.harness_libvirt import load_services, readable_test_guest
from .contract.serial_probe import SerialLogProbe
from .test_libvirt_testdriver import _count_libvirt_calls

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.slow

URI = "qemu:///system"
STATE_DIR = Path("/var/lib/libvirt/images/vmctl")
BOOT_TIMEOUT = 60


@pytest.fixture(scope="module")
def guest() -> tuple[Path, Path, Path, str]:
    load_services().ensure_libvirtd()
    return readable_test_guest()


@pytest.fixture
def hv(guest: tuple[Path, Path, Path, str]) -> Iterator[vmctl.Hypervisor]:
    conn = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
    yield conn
    conn.close()


MakeVm = Callable[..., vmctl.Machine]


@pytest.fixture
def make_vm(hv: vmctl.Hypervisor, guest: tuple[Path, Path, Path, str], tmp_path: Path) -> Iterator[MakeVm]:
    kernel, initrd, disk, cmdline = guest
    made: list[str] = []

    def make(name: str) -> vmctl.Machine:
        name = f"{name}-{time.monotonic_ns() % 10**8}"
        spec = vmctl.MachineSpec(
            name=name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            serial_log=tmp_path / f"{name}.log",
        )
        made.append(name)
        return hv.create(spec)

    yield make
    fresh = vmctl.connect("libvirt", uri=URI, state_dir=STATE_DIR)
    try:
        for name in made:
            try:
                fresh.machine(name).destroy()
            except vmctl.MachineNotFound:
                pass
    finally:
        fresh.close()


def boot(vm: vmctl.Machine) -> SerialLogProbe:
    assert vm.spec.serial_log is not None
    probe = SerialLogProbe(vm.spec.serial_log)
    vm.start()
    probe.wait_ready(BOOT_TIMEOUT)
    return probe


def test_wait_for_returns_on_the_event_without_polling(make_vm: MakeVm) -> None:
    vm = make_vm("events")
    boot(vm)
    reads: list[float] = []
    original = type(vm)._get_state

    def counting_get_state(self: vmctl.Machine) -> State:
        reads.append(time.monotonic())
        return original(self)

    vm._get_state = counting_get_state.__get__(vm)  # type: ignore[method-assign]
    vm._do_request_shutdown()  # the guest takes a second or two to power off
    asked = time.monotonic()
    assert vm.wait_for(State.STOPPED, timeout=BOOT_TIMEOUT) is State.STOPPED
    took = time.monotonic() - asked
    # A 50 ms poll would have read the state took/0.05 times; events need one read per change
    # (shutdown begins, guest halted, domain stopped).
    assert took > 0.3, "the guest stopped too fast to tell events from polling"
    assert len(reads) <= 5, f"{len(reads)} state reads in {took:.2f} s: wait_for polled"


def test_usage_of_running_machines_is_one_call(
    hv: vmctl.Hypervisor, make_vm: MakeVm, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms = [make_vm(f"bulk{i}") for i in range(3)]
    for vm in vms[:2]:
        vm.start()  # the guests need not have booted: QEMU already uses CPU
    hv.usage_all()  # learns which domains are vmctl's
    calls = _count_libvirt_calls(monkeypatch)
    usage = hv.usage_all()
    assert dict(calls) == {"virConnect.getAllDomainStats": 1}
    for vm in vms[:2]:
        u = usage[vm.name]
        assert u.cpu_seconds is not None and u.cpu_seconds > 0
        assert u.memory_bytes is not None and u.memory_bytes > 10 << 20
        assert u.disk_read_bytes is not None and u.disk_write_bytes is not None
    stopped = usage[vms[2].name]
    assert stopped.cpu_seconds is None and stopped.memory_bytes is None


@pytest.mark.stops_libvirtd
def test_libvirtd_restart_while_a_machine_runs(make_vm: MakeVm) -> None:
    services = load_services()
    vm = make_vm("restart")
    probe = boot(vm)
    pid = vm.pid
    boots = probe.boots()
    counter = probe.wait_counter_above(1, 15)
    try:
        services.stop_libvirtd()
        started = time.monotonic()
        with pytest.raises(vmctl.BackendError):
            vm.pause()
        assert time.monotonic() - started < 5, "a call during the outage must fail promptly"
    finally:
        services.ensure_libvirtd()
    # The next call reconnects; the guest kept running all along and was not rebooted.
    assert vm.state is State.RUNNING
    assert vm.pid == pid
    probe.wait_counter_above(counter + 2, 15)
    assert probe.boots() == boots
    vm.pause()
    assert vm.state is State.PAUSED
    vm.resume()
    assert wait_until(lambda: vm.usage().cpu_seconds, 5, "usage after reconnecting")
    vm.poweroff()
    assert vm.state is State.STOPPED


def test_poweroff_of_a_crashed_machine_makes_it_stopped(make_vm: MakeVm) -> None:
    import os
    import signal

    vm = make_vm("crash")
    probe = boot(vm)
    pid = vm.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert vm.wait_for(State.CRASHED, timeout=30) is State.CRASHED
    vm.poweroff()
    assert vm.state is State.STOPPED  # libvirt still says "shut off (crashed)"; vmctl remembers
    boots = probe.boots()
    vm.start()
    wait_until(lambda: probe.boots() > boots and probe.ready(), BOOT_TIMEOUT, "a fresh boot")
    os.kill(vm.pid or 0, signal.SIGKILL)
    assert vm.wait_for(State.CRASHED, timeout=30) is State.CRASHED, "a new crash must show again"
    vm.destroy()


def _echo(port: int) -> bytes:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping\n")
            return s.recv(16)
    except OSError:
        return b""


def test_share_and_port_forward_reach_the_guest(hv: vmctl.Hypervisor, guest: tuple[Path, Path, Path, str]) -> None:
    import shutil
    import tempfile

    kernel, initrd, disk, cmdline = guest
    share = Path(tempfile.mkdtemp(prefix="vmctl-share-", dir="/var/lib/libvirt/images"))
    name = f"share-{time.monotonic_ns() % 10**8}"
    port = free_port()
    try:
        share.chmod(0o777)  # the guest writes through QEMU, which runs as libvirt-qemu
        (share / "run.sh").write_text("echo hello-from-guest > out.txt && share put job out.txt\n")
        spec = vmctl.MachineSpec(
            name=name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline + " vmctl.share=job",
            shared_dirs={"job": share},
            network=vmctl.Network(port_forwards=[vmctl.PortForward(host_port=port, guest_port=22)]),
            serial_log=share / "serial.log",
        )
        vm = hv.create(spec)
        try:
            boot(vm)
            wait_until(lambda: (share / "out.txt").exists(), 30, "the guest's run.sh to write into the share")
            assert (share / "out.txt").read_text() == "hello-from-guest\n"
            assert wait_until(lambda: _echo(port), 30, "the echo service through the forward") == b"ping\n"
            vm.suspend()
            assert _echo(port) == b""
            vm.start()  # a new QEMU process: vmctl adds the forward again
            assert wait_until(lambda: _echo(port), 30, "the forward after restore") == b"ping\n"
        finally:
            vm.destroy()
    finally:
        shutil.rmtree(share, ignore_errors=True)


def test_images_the_daemon_cannot_read_are_refused_at_create(
    hv: vmctl.Hypervisor, guest: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    kernel, _initrd, disk, _cmdline = guest
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(vmctl.InvalidSpec, match="libvirt-qemu"):
        hv.create(vmctl.MachineSpec(name="unreachable", disk=disk, kernel=kernel, shared_dirs={"x": private}))
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("unreachable")


def test_the_adapter_ends_a_task_whose_libvirt_overlay_outside_the_slot_passes_the_disk_bound(
    guest: tuple[Path, Path, Path, str],
) -> None:
    """Issue 13, attack 9: the domain's overlay lives in libvirt's image directory, not in the
    slot, and still counts against ``rsc_disk_bound``; past it the task ends with 196."""
    import os
    import shutil
    import tempfile

    from vmctl.boinc._diskuse import CHECK_INTERVAL, EXIT_DISK_LIMIT_EXCEEDED, disk_usage
    from vmctl.boinc.adapter import Adapter
    from vmctl.boinc.hostconfig import Profile
    from vmctl.boinc.initdata import read_init_data
    from vmctl.boinc.job import find_job_file, load_job
    from vmctl.boinc.shm import open_shared_memory
    from vmctl.boinc.slot import Slot
    from vmctl.boinc.testing import FakeClient

    kernel, initrd, disk, cmdline = guest
    bound = 4e6
    root = Path(tempfile.mkdtemp(prefix="vmctl-diskbound-", dir="/var/lib/libvirt/images"))
    hv = vmctl.connect("libvirt", uri=URI)
    client: FakeClient | None = None
    try:
        project, slot = root / "projects" / "p", root / "slots" / "0"
        project.mkdir(parents=True)
        slot.mkdir(parents=True)
        for directory in (root, root / "projects", project):
            directory.chmod(0o711)  # the daemon's QEMU user reaches the images, lists nothing
        for name, source in {"vmlinuz": kernel, "initrd.img": initrd, "disk.qcow2": disk}.items():
            os.link(source, project / name)
        (project / "job.toml").write_text(
            f'backend = "libvirt"\nimage = "disk.qcow2"\nkernel = "vmlinuz"\ninitrd = "initrd.img"\n'
            f'cmdline = "{cmdline}"\nmemory_mib = 128\n[backend_options]\naccel = "tcg"\n'
        )
        links = {
            "vmctl_job.toml": "job.toml",
            "disk.qcow2": "disk.qcow2",
            "vmlinuz": "vmlinuz",
            "initrd.img": "initrd.img",
        }
        for open_name, physical in links.items():
            (slot / open_name).write_text(f"<soft_link>../../projects/p/{physical}</soft_link>\n")
        client = FakeClient(slot, project_dir=str(project), boinc_dir=str(root), rsc_disk_bound=bound)
        data = read_init_data(slot)
        adapter = Adapter(
            Slot(slot),
            data,
            load_job(find_job_file(slot)),
            open_shared_memory(slot, data.shm_key),
            reap_at_start=False,
            profile=Profile("libvirt", "libvirt", {"uri": URI}),  # overlays in libvirt's image directory
        )
        assert adapter.start() is None, "the task runs"
        vm = adapter.vm
        assert vm is not None and vm.state is State.RUNNING
        console = slot / "vm_console.log"
        wait_until(lambda: b"VMCTL-GUEST READY" in console.read_bytes(), BOOT_TIMEOUT, "the guest to boot")
        # The booted guest's RAM saved into the overlay: the VM's files grow past the bound,
        # outside the slot.
        vm.snapshot("grown")
        used = vm.disk_usage()
        (overlay,) = used.paths
        assert Path(overlay).parent == STATE_DIR and not Path(overlay).is_relative_to(slot)
        assert used.bytes > bound, f"the snapshot made the overlay {used.bytes} bytes"
        assert (disk_usage([slot]) or 0) < bound, "the slot alone stays under the bound"
        deadline = time.monotonic() + CHECK_INTERVAL + 60
        code = None
        tick = 0
        while code is None:
            assert time.monotonic() < deadline, "the task ran on past its disk bound"
            if tick % 10 == 0:
                client.heartbeat()
            client.poll()
            code = adapter.step()
            tick += 1
            time.sleep(0.1)
        assert code == EXIT_DISK_LIMIT_EXCEEDED == 196
        assert not Path(overlay).exists(), "the VM is deleted, its overlay with it"
        assert vm.name not in [m.name for m in hv.machines()]
    finally:
        if client is not None:
            client.close()
        for machine in hv.machines():
            if machine.name.startswith("boinc-") and machine.spec.kernel is not None:
                if str(machine.spec.kernel).startswith(str(root)):
                    machine.destroy()
        hv.close()
        shutil.rmtree(root, ignore_errors=True)


def test_disk_usage_counts_the_overlay_and_the_managed_save_image(make_vm: MakeVm) -> None:
    vm = make_vm("du")
    boot(vm)
    running = vm.disk_usage()
    (overlay,) = running.paths
    assert Path(overlay).parent == STATE_DIR and running.bytes > 0
    vm.suspend()
    saved = vm.disk_usage()
    assert saved.paths == (overlay, f"/var/lib/libvirt/qemu/save/{vm.name}.save")
    assert saved.bytes > running.bytes + (1 << 20), "the guest's RAM in the managed-save image"
    vm.start()
    assert vm.disk_usage().paths == (overlay,), "restored: the image is gone"
    vm.poweroff()
