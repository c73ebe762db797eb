"""The vSphere backend's verbs against vcsim: create from a disk image, power, snapshots, usage,
settings and destroy, checked on the server's side (its inventory and its datastore files)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.contract.harness_vsphere import set_tools_running
from tests.vcsim import Vcsim, vcsim_fixture
from vmctl import State
from vmctl.types import USAGE_FIELDS

vcsim = vcsim_fixture(vms=1)
_folders = itertools.count(1)


@pytest.fixture
def hv(vcsim: Vcsim) -> Iterator[Any]:
    conn = vcsim.connect(folder=f"tm/f{next(_folders)}")
    try:
        yield conn
    finally:
        for vm in conn.machines():
            vm.destroy()
        conn.close()


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    disk = tmp_path / "base.img"
    disk.write_bytes(b"\1" * (2 << 20))
    return disk


def files(vcsim: Vcsim) -> list[str]:
    """The datastore's files, relative to it."""
    (datastore,) = [p for p in vcsim.datastore_root.iterdir() if p.is_dir()]
    return sorted(str(p.relative_to(datastore)) for p in datastore.rglob("*") if p.is_file())


def disks(vm: Any) -> list[Any]:
    devices = vm._props(["config.hardware.device"])["config.hardware.device"]
    return [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]


# -- create -----------------------------------------------------------------------------------
def test_create_uploads_the_image_once_and_gives_each_vm_a_delta(hv: Any, vcsim: Vcsim, raw: Path) -> None:
    a = hv.create(vmctl.MachineSpec(name="a", disk=raw, memory_mib=128, cpus=2))
    b = hv.create(vmctl.MachineSpec(name="b", disk=raw))
    images = [f for f in files(vcsim) if f.startswith("vmctl-images/")]
    assert len(images) == 2 and images[0].endswith("/disk-flat.vmdk") and images[1].endswith("/disk.vmdk")
    (datastore,) = [p for p in vcsim.datastore_root.iterdir() if p.is_dir()]
    assert (datastore / images[0]).read_bytes() == raw.read_bytes()
    descriptor = (datastore / images[1]).read_text()
    assert 'createType="vmfs"' in descriptor and 'RW 4096 VMFS "disk-flat.vmdk"' in descriptor
    for vm in (a, b):
        (disk,) = disks(vm)
        assert disk.backing.parent.fileName == f"[LocalDS_0] {images[1]}"
        assert disk.backing.fileName.startswith(f"[LocalDS_0] {vm.name}/")
        assert disk.capacityInKB == 2048
    hw = a._props(["config.hardware.memoryMB", "config.hardware.numCPU", "config.guestId"])
    assert (hw["config.hardware.memoryMB"], hw["config.hardware.numCPU"], hw["config.guestId"]) == (
        128,
        2,
        "otherGuest64",
    )
    assert a.spec == vmctl.MachineSpec(name="a", disk=raw, memory_mib=128, cpus=2)
    assert [m.name for m in hv.machines()] == ["a", "b"]


def test_overlay_false_copies_the_base(hv: Any, vcsim: Vcsim, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="full", disk=raw, overlay=False))
    (disk,) = disks(vm)
    assert disk.backing.fileName == "[LocalDS_0] full/full.vmdk" and disk.backing.parent is None
    (datastore,) = [p for p in vcsim.datastore_root.iterdir() if p.is_dir()]
    assert (datastore / "full/full-flat.vmdk").read_bytes() == raw.read_bytes()


def test_flat_vmdk_is_accepted_sparse_formats_are_refused(hv: Any, tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is needed (apt-get install qemu-utils)")
    flat = tmp_path / "flat.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat), "4M"], check=True
    )
    vm = hv.create(vmctl.MachineSpec(name="flat", disk=flat))
    assert disks(vm)[0].capacityInKB == 4096
    for fmt, options in (("qcow2", []), ("vmdk", []), ("vmdk", ["-o", "subformat=streamOptimized"]), ("vdi", [])):
        image = tmp_path / f"img-{fmt}-{len(options)}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(image), "4M"], check=True)
        with pytest.raises(vmctl.InvalidSpec, match="qemu-img convert"):
            hv.create(vmctl.MachineSpec(name="bad", disk=image))
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\0" * 1000)
    with pytest.raises(vmctl.InvalidSpec, match="multiple of 512"):
        hv.create(vmctl.MachineSpec(name="bad", disk=odd))
    assert [m.name for m in hv.machines()] == ["flat"]


def test_what_vsphere_cannot_create_is_unsupported(hv: Any, raw: Path, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    for spec in (
        vmctl.MachineSpec(name="k", kernel=kernel),
        vmctl.MachineSpec(name="s", disk=raw, shared_dirs={"job": tmp_path}),
        vmctl.MachineSpec(name="l", disk=raw, serial_log=tmp_path / "console.log"),
        vmctl.MachineSpec(name="p", disk=raw, network=vmctl.Network([vmctl.PortForward(2222, 22)])),
    ):
        with pytest.raises(vmctl.Unsupported):
            hv.create(spec)
    assert hv.machines() == []


def test_create_with_network_and_existing_name(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="n", disk=raw, network=vmctl.Network()))
    assert vm.network_connected() is True
    with pytest.raises(vmctl.MachineExists):
        hv.create(vmctl.MachineSpec(name="n", disk=raw))
    assert len(hv.machines()) == 1


def test_machines_are_those_of_the_folder(vcsim: Vcsim, hv: Any, raw: Path) -> None:
    hv.create(vmctl.MachineSpec(name="mine", disk=raw))
    everything = vcsim.connect()
    try:
        names = [m.name for m in everything.machines()]
        assert "mine" in names and "DC0_H0_VM0" in names
        foreign = everything.machine("DC0_H0_VM0")
        assert foreign.spec.name == "DC0_H0_VM0" and foreign.spec.disk is None  # described, not recorded
        assert foreign.spec.memory_mib > 0
    finally:
        everything.close()
    assert [m.name for m in hv.machines()] == ["mine"]


def test_spec_recorded_on_another_host_keeps_its_paths(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="moved", disk=raw, network=vmctl.Network()))
    raw.unlink()  # as seen from a host without the image
    spec = hv.machine("moved").spec
    assert spec.disk == raw and spec.network == vmctl.Network()
    recorded = json.loads(vm._extra_config()["vmctl.spec"])
    assert recorded["disk"] == str(raw)


# -- power ------------------------------------------------------------------------------------
def test_power_verbs_and_states(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="p", disk=raw))
    vm.start()
    assert vm.state is State.RUNNING and vm.pid is None
    vm.suspend()
    assert vm.state is State.SUSPENDED
    vm.start()
    assert vm.state is State.RUNNING
    assert vm.restart(hard=True) is False
    assert vm.state is State.RUNNING
    vm.suspend()
    vm.poweroff()
    assert vm.state is State.STOPPED
    with pytest.raises(vmctl.Unsupported):
        vm.pause()


def test_graceful_stop_needs_tools(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="g", disk=raw))
    vm.start()
    with pytest.raises(vmctl.BackendError) as err:
        vm.stop(timeout=5)
    from vmctl_vsphere import ToolsUnavailable

    assert isinstance(err.value, ToolsUnavailable) and "guestToolsNotRunning" in str(err.value)
    assert vm.state is State.RUNNING, "no shutdown may be sent without Tools"
    with pytest.raises(ToolsUnavailable):
        vm.restart(hard=False)
    set_tools_running(vm)
    assert vm.stop(timeout=5) is True
    assert vm.state is State.STOPPED


def test_graceful_reboot_is_unsupported_by_vcsim(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="r", disk=raw))
    vm.start()
    set_tools_running(vm)
    with pytest.raises(vmctl.Unsupported, match="MethodNotFound"):
        vm.restart(hard=False, timeout=2)
    assert vm.state is State.RUNNING


# -- snapshots --------------------------------------------------------------------------------
def test_snapshots_tree_revert_and_delete(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="s", disk=raw))
    assert vm.snapshots() == []
    cold = vm.snapshot("cold", description="disk only")
    assert not cold.has_memory and cold.description == "disk only" and cold.parent is None
    vm.start()
    live = vm.snapshot("live")
    assert live.has_memory and live.parent == "cold"
    vm.snapshot("later")
    assert [(s.name, s.parent) for s in vm.snapshots()] == [("cold", None), ("live", "cold"), ("later", "live")]
    vm.revert("cold")
    assert vm.state is State.STOPPED
    vm.revert("live")
    assert vm.state is State.RUNNING
    vm.poweroff()
    vm.revert("live")
    assert vm.state is State.RUNNING
    vm.delete_snapshot("live")
    assert [(s.name, s.parent) for s in vm.snapshots()] == [("cold", None), ("later", "cold")]
    assert vm.state is State.RUNNING
    with pytest.raises(vmctl.SnapshotNotFound):
        vm.revert("live")
    vm.delete_snapshot("later")
    vm.delete_snapshot("cold")
    assert vm.snapshots() == []


# -- usage and settings -----------------------------------------------------------------------
def test_usage_while_running_and_stopped(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="u", disk=raw))
    assert vm.usage().cpu_seconds is None
    vm.start()
    usage = vm.usage()
    for field in hv.capabilities.usage_fields:
        value = getattr(usage, field)
        assert value is not None and value >= 0, field
    vm.suspend()
    suspended = vm.usage()
    assert [getattr(suspended, f) for f in USAGE_FIELDS] == [None] * len(USAGE_FIELDS)


def test_cpu_limit_in_host_mhz(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="c", disk=raw, cpus=2))
    host = vm._props(["runtime.host"])["runtime.host"]
    mhz = hv.session.props(host, ["summary.hardware.cpuMhz"])["summary.hardware.cpuMhz"]
    vm.set_cpu_limit(25)
    assert vm.cpu_limit_mhz() == -(-2 * mhz // 4)
    vm.set_cpu_limit(100)
    assert vm.cpu_limit_mhz() is None


def test_network_toggle_disconnects_the_nic(hv: Any, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="w", disk=raw, network=vmctl.Network()))
    with pytest.raises(vmctl.InvalidState):
        vm.set_network(False)
    vm.start()
    vm.set_network(False)
    assert vm.network_connected() is False
    vm.set_network(True)
    assert vm.network_connected() is True


# -- destroy ----------------------------------------------------------------------------------
def test_destroy_keeps_the_image_and_removes_the_rest(hv: Any, vcsim: Vcsim, raw: Path) -> None:
    vm = hv.create(vmctl.MachineSpec(name="d", disk=raw))
    (disk,) = disks(vm)
    image = disk.backing.parent.fileName.split("] ", 1)[1].rsplit("/", 1)[0]
    vm.start()
    vm.snapshot("one")
    vm.snapshot("two")
    vm.suspend()
    before = raw.read_bytes()
    vm.destroy()
    assert not [f for f in files(vcsim) if f.startswith("d/")]
    assert [f for f in files(vcsim) if f.startswith(image)] == [f"{image}/disk-flat.vmdk", f"{image}/disk.vmdk"]
    assert raw.read_bytes() == before
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("d")
    with pytest.raises(vmctl.MachineNotFound):
        vm.state  # noqa: B018 - the old handle sees it gone


def test_handle_follows_a_recreated_machine(hv: Any, raw: Path) -> None:
    old = hv.create(vmctl.MachineSpec(name="again", disk=raw))
    hv.machine("again").destroy()
    hv.create(vmctl.MachineSpec(name="again", disk=raw)).start()
    assert old.state is State.RUNNING  # a handle names a machine, not one managed object


def test_a_damaged_image_is_repaired_by_the_next_create(hv: Any, vcsim: Vcsim, tmp_path: Path) -> None:
    """vcsim 0.24.2 deletes files by stale layout keys when snapshots go, which can hit a base's descriptor."""
    disk = tmp_path / "repair.img"
    disk.write_bytes(b"\2" * 4096)
    vm = hv.create(vmctl.MachineSpec(name="first", disk=disk))
    descriptor = disks(vm)[0].backing.parent.fileName.split("] ", 1)[1]
    (datastore,) = [p for p in vcsim.datastore_root.iterdir() if p.is_dir()]
    (datastore / descriptor).unlink()
    hv.create(vmctl.MachineSpec(name="second", disk=disk))
    assert b'RW 8 VMFS "disk-flat.vmdk"' in (datastore / descriptor).read_bytes()
    assert not [f for f in files(vcsim) if "/.upload-" in f]


# -- placement ----------------------------------------------------------------------------------
def test_placement_options_are_honoured(vcsim: Vcsim, raw: Path) -> None:
    hv = vcsim.connect(
        folder="tm/placed", datastore="LocalDS_0", esx_host="DC0_C0_H1", resource_pool="DC0_C0", network="DC0_DVPG0"
    )
    try:
        vm = hv.create(vmctl.MachineSpec(name="placed", disk=raw, network=vmctl.Network()))
        p = vm._props(["runtime.host", "resourcePool", "config.hardware.device"])
        assert hv.session.props(p["runtime.host"], ["name"])["name"] == "DC0_C0_H1"
        pool_owner = hv.session.props(p["resourcePool"], ["owner"])["owner"]
        assert hv.session.props(pool_owner, ["name"])["name"] == "DC0_C0"
        (nic,) = [d for d in p["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        assert isinstance(nic.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
        vm.start()
        assert vm.state is State.RUNNING
    finally:
        for vm in hv.machines():
            vm.destroy()
        hv.close()
    for option in ({"datastore": "nope"}, {"esx_host": "nope"}, {"resource_pool": "nope"}, {"network": "nope"}):
        conn = vcsim.connect(folder="tm/bad", **option)
        try:
            with pytest.raises(vmctl.InvalidSpec, match=next(iter(option))):
                conn.create(vmctl.MachineSpec(name="x", disk=raw, network=vmctl.Network()))
            assert conn.machines() == []
        finally:
            conn.close()


def test_a_standalone_esxi_host(raw: Path) -> None:
    with Vcsim(model="esx", vms=1) as esx:
        hv = esx.connect()
        try:
            assert hv.datacenter_path == "ha-datacenter"
            vm = hv.create(vmctl.MachineSpec(name="on-esx", disk=raw))
            vm.start()
            vm.snapshot("s")
            assert vm.state is State.RUNNING and [s.name for s in vm.snapshots()] == ["s"]
            vm.destroy()
            assert "on-esx" not in [m.name for m in hv.machines()]
        finally:
            hv.close()
