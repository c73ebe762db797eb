"""Importing OVF appliances (issue 16): the reader, OVA unpacking under attack, and imports that
boot on real QEMU (TCG) from an OVA built from the test guest's disk."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl.appliance import (
    InvalidAppliance,
    ManifestMismatch,
    UnsafeAppliance,
    UnsupportedAppliance,
    open_appliance,
    parse_descriptor,
)
from vmctl.backend.appliance import check_image
from vmctl.backend.tools import run_tool
from vmctl.testguest import TestGuest, ensure_test_guest

from . import ova_build
from .ova_build import QCOW2, STREAM_VMDK, add_bytes, descriptor

REALWORLD = Path(__file__).parent / "realworld" / "ovf"
BOOT_TIMEOUT = 90


# -- descriptors as vendors write them ------------------------------------------------------------
def test_virtualbox_export_is_read() -> None:
    app = parse_descriptor((REALWORLD / "virtualbox-vagrant-smartos-cpp.ovf").read_bytes())
    assert (app.name, app.memory_mib, app.cpus, app.os_type) == ("vagrant-smartos-cpp", 1024, 1, "OpenSolaris_64")
    (disk,) = app.disks
    assert (disk.href, disk.capacity_bytes, disk.image_format, disk.subformat) == (
        "box-disk001.vmdk",
        8388608000,
        "vmdk",
        "streamOptimized",
    )
    assert app.cdroms == ("box-disk002.iso",)  # VirtualBox lists the ISO among the disks
    assert [(n.network, n.model) for n in app.nics] == [("NAT", "E1000")]


def test_ovftool_export_is_read() -> None:
    app = parse_descriptor((REALWORLD / "vmware-ovftool-cot.ovf").read_bytes())
    assert (app.name, app.memory_mib, app.cpus, app.os_type) == ("vmw", 1536, 2, "rhel6_64Guest")
    (disk,) = app.disks
    assert (disk.href, disk.capacity_bytes, disk.file_size) == ("input.vmdk", 1 << 30, 152576)
    assert len(app.nics) == 4 and {n.network for n in app.nics} == {"lanethernet0"}


def test_generated_descriptor_round_trips() -> None:
    data = descriptor("gen", [("d.vmdk", 64 << 20, STREAM_VMDK)], memory_mib=96, cpus=2, nics=0)
    app = parse_descriptor(data)
    assert (app.name, app.memory_mib, app.cpus, app.nics) == ("gen", 96, 2, ())


def test_ovf_2_items_are_read() -> None:
    """OVF 2.0 (as VirtualBox's --ovf20 writes it): envelope/2, NICs as EthernetPortItem in the
    epasd namespace, memory in plain MegaBytes."""
    data = descriptor("two", [("d.vmdk", 1 << 20, STREAM_VMDK)], nics=0).replace(b"ovf/envelope/1", b"ovf/envelope/2")
    epasd = b"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData"
    nic = (
        b'<ovf:EthernetPortItem xmlns:epasd="' + epasd + b'"><epasd:Connection>NAT</epasd:Connection>'
        b"<epasd:InstanceID>9</epasd:InstanceID><epasd:ResourceSubType>virtio</epasd:ResourceSubType>"
        b"<epasd:ResourceType>10</epasd:ResourceType></ovf:EthernetPortItem></ovf:VirtualHardwareSection>"
    )
    data = data.replace(b"</ovf:VirtualHardwareSection>", nic).replace(b"byte * 2^20", b"MegaBytes")
    app = parse_descriptor(data)
    assert (app.memory_mib, [(n.network, n.model) for n in app.nics]) == (128, [("NAT", "virtio")])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d.replace(b"<rasd:ResourceType>4<", b"<rasd:ResourceType>99<"), InvalidAppliance),
        (lambda d: d.replace(b'ovf:href="d.vmdk"', b'ovf:href="http://example.org/d.vmdk"'), UnsupportedAppliance),
        (lambda d: d.replace(b'ovf:href="d.vmdk"', b'ovf:href="../../etc/passwd"'), UnsafeAppliance),
        (lambda d: d.replace(b'ovf:href="d.vmdk"', b'ovf:href="/etc/passwd"'), UnsafeAppliance),
        (lambda d: d.replace(STREAM_VMDK.encode(), b"urn:x-unknown"), UnsupportedAppliance),
        (lambda d: d.replace(b"byte * 2^20", b"hertz * 10^6"), UnsupportedAppliance),
        (lambda d: d.replace(b"<rasd:VirtualQuantity>1<", b"<rasd:VirtualQuantity>many<"), InvalidAppliance),
        (lambda d: d[:-30], InvalidAppliance),
        (lambda d: d.replace(b"ovf/envelope/1", b"ovf/envelope/9"), InvalidAppliance),
    ],
)
def test_bad_descriptors_raise_typed_errors(change: object, error: type[Exception]) -> None:
    data = descriptor("bad", [("d.vmdk", 1 << 20, STREAM_VMDK)])
    with pytest.raises(error):
        parse_descriptor(change(data))  # type: ignore[operator]


def test_entity_bomb_and_external_entity_are_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">' + b"".join(
        f'<!ENTITY a{i} "{("&a" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
    )
    bomb += b"]><Envelope>&a9;</Envelope>"
    with pytest.raises(UnsafeAppliance, match="document type"):
        parse_descriptor(bomb)
    external = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><Envelope>&x;</Envelope>'
    with pytest.raises(UnsafeAppliance):
        parse_descriptor(external)
    with pytest.raises(UnsafeAppliance, match="larger"):
        parse_descriptor(b"<Envelope>" + b" " * (5 << 20) + b"</Envelope>")
    assert issubclass(UnsafeAppliance, vmctl.InvalidSpec)


# -- OVA archives under attack --------------------------------------------------------------------
def _attack_ova(tmp_path: Path, members: Iterator[tuple[tarfile.TarInfo, bytes | None]], ovf: bytes) -> Path:
    path = tmp_path / "attack.ova"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, "a.ovf", ovf)
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_member("../escaped.vmdk", data=b"KDMV"), "outside"),
        (_member("/tmp/vmctl-ova-abs.vmdk", data=b"KDMV"), "outside"),
        (_member("d.vmdk", tarfile.SYMTYPE, link="/etc/passwd"), "link"),
        (_member("d.vmdk", tarfile.LNKTYPE, link="a.ovf"), "link"),
        (_member("d.vmdk", tarfile.CHRTYPE), "device"),
        (_member("d.vmdk", tarfile.FIFOTYPE), "device"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], match: str
) -> None:
    ova = _attack_ova(tmp_path, iter([member]), descriptor("x", [("d.vmdk", 1 << 20, STREAM_VMDK)]))
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(UnsafeAppliance, match=match), open_appliance(ova, workdir=work):
        pass
    assert _tree(tmp_path) == before  # the private unpack directory is gone too
    assert not Path("/tmp/vmctl-ova-abs.vmdk").exists()


def test_huge_declared_size_is_refused_before_writing(tmp_path: Path) -> None:
    ovf = descriptor("x", [("d.vmdk", 1 << 20, STREAM_VMDK)])
    info = tarfile.TarInfo("d.vmdk")
    info.size = 1 << 40  # 1 TiB declared, a few bytes present
    path = tmp_path / "huge.ova"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, "a.ovf", ovf)
    head = buf.getvalue().rstrip(b"\0")
    head += b"\0" * (-len(head) % 512)
    path.write_bytes(head + info.tobuf(format=tarfile.GNU_FORMAT) + b"KDMV" + b"\0" * 1020)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeAppliance, match="bytes"), open_appliance(path, workdir=work):
        pass
    assert list(work.iterdir()) == []
    # and a real file past a caller's bound
    small = ova_build.ova(tmp_path / "small.ova", "a.ovf", ovf, [("d.vmdk", b"KDMV" + b"\0" * 4092)])
    with pytest.raises(UnsafeAppliance, match="bound"), open_appliance(small, workdir=work, max_bytes=1024):
        pass


def test_manifest_mismatch_is_refused(tmp_path: Path) -> None:
    ovf = descriptor("x", [("d.vmdk", 1 << 20, STREAM_VMDK)])
    good = ova_build.ova(tmp_path / "good.ova", "a.ovf", ovf, [("d.vmdk", b"KDMV-original")])
    with open_appliance(good) as opened:
        assert opened.disk_paths["vmdisk1"].read_bytes() == b"KDMV-original"
        assert opened.descriptor.read_bytes() == ovf
    mf = ova_build.manifest([("a.ovf", ovf), ("d.vmdk", b"KDMV-original")], "sha1")
    path = tmp_path / "tampered.ova"
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.ovf", ovf), ("a.mf", mf), ("d.vmdk", b"KDMV-tampered")):
            add_bytes(tar, name, data)
    with pytest.raises(ManifestMismatch) as err, open_appliance(path, workdir=tmp_path):
        pass
    assert err.value.file == "d.vmdk"
    # a descriptor changed after the manifest was written
    path2 = tmp_path / "tampered-ovf.ova"
    with tarfile.open(path2, "w") as tar:
        for name, data in (("a.ovf", ovf.replace(b"128", b"999")), ("a.mf", mf), ("d.vmdk", b"KDMV-original")):
            add_bytes(tar, name, data)
    with pytest.raises(ManifestMismatch, match=r"a\.ovf"), open_appliance(path2, workdir=tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ova", "tampered-ovf.ova", "tampered.ova"]


def test_ovf_files_must_be_regular_files_beside_it(tmp_path: Path) -> None:
    (tmp_path / "a.ovf").write_bytes(descriptor("x", [("d.vmdk", 1 << 20, STREAM_VMDK)]))
    with pytest.raises(InvalidAppliance, match="missing"), open_appliance(tmp_path / "a.ovf"):
        pass
    (tmp_path / "d.vmdk").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeAppliance, match="links"), open_appliance(tmp_path / "a.ovf"):
        pass


def test_disk_images_reaching_other_files_are_refused(tmp_path: Path) -> None:
    # a VMDK text descriptor naming a host file as its extent, declared as the appliance's VMDK
    desc = tmp_path / "desc.vmdk"
    desc.write_text('# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n')
    with pytest.raises(UnsafeAppliance, match="header"):
        check_image("qemu-img", desc, "vmdk")
    # a "raw" image that is a qcow2 with a backing file (qemu-img would probe it as qcow2)
    backed = tmp_path / "backed.img"
    run_tool(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(backed), "1M"], timeout=30
    )
    with pytest.raises(UnsafeAppliance, match="header"):
        check_image("qemu-img", backed, "raw")
    with pytest.raises(UnsafeAppliance, match="backing"):
        check_image("qemu-img", backed, "qcow2")


# -- imports --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


@pytest.fixture(scope="module")
def guest_ova(guest: TestGuest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OVA of the test guest's disk as a stream-optimised VMDK, 2 CPUs, 160 MiB, one NIC."""
    root = tmp_path_factory.mktemp("ova")
    vmdk = root / "guest-disk1.vmdk"
    run_tool(
        ["qemu-img", "convert", "-q", "-O", "vmdk", "-o", "subformat=streamOptimized", str(guest.disk), str(vmdk)],
        timeout=60,
    )
    ovf = descriptor("test-guest", [(vmdk.name, 64 << 20, STREAM_VMDK)], memory_mib=160, cpus=2,
                     file_sizes=[vmdk.stat().st_size])  # fmt: skip
    return ova_build.ova(root / "test-guest.ova", "test-guest.ovf", ovf, [(vmdk.name, vmdk)])


def _wait_disk(log: Path, timeout: float) -> bytes:
    """The console once the guest says whether it mounted its disk (before its network is up)."""
    deadline = time.monotonic() + timeout
    while not any(line in (text := log.read_bytes() if log.exists() else b"") for line in _DISK_LINES):
        assert time.monotonic() < deadline, "the guest did not get to its disk"
        time.sleep(0.1)
    return text


_DISK_LINES = (b"VMCTL-GUEST DISK mounted", b"VMCTL-GUEST WARN mount")


@pytest.mark.slow
def test_ova_imports_and_boots_on_qemu(tmp_path: Path, guest: TestGuest, guest_ova: Path) -> None:
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    log = tmp_path / "console.log"
    vm = hv.import_appliance(guest_ova, kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline, serial_log=log)
    try:
        assert vm.name == "test-guest" and vm.state is vmctl.State.STOPPED
        assert (vm.spec.memory_mib, vm.spec.cpus, vm.spec.network) == (160, 2, vmctl.Network())
        directory = tmp_path / "state" / "test-guest"
        assert vm.spec.disk == directory / "appliance.qcow2"
        assert hv.image_format(directory / "appliance.qcow2") == "qcow2"
        assert not [p for p in (tmp_path / "state").iterdir() if "ova" in p.name]  # unpack dir gone
        vm.start()
        # the guest mounts its ext2 disk, the converted one
        text = _wait_disk(log, BOOT_TIMEOUT)
        assert b"VMCTL-GUEST DISK mounted" in text, text[-500:]
        with pytest.raises(vmctl.MachineExists):
            hv.import_appliance(guest_ova, kernel=guest.kernel)
    finally:
        vm.destroy()
    assert not (tmp_path / "state" / "test-guest").exists()
    assert guest_ova.is_file()


def test_ovf_with_qcow2_disk_gets_an_overlay_not_a_copy(tmp_path: Path, guest: TestGuest) -> None:
    disk = tmp_path / "disk.qcow2"
    run_tool(["qemu-img", "convert", "-q", "-O", "qcow2", str(guest.disk), str(disk)], timeout=60)
    (tmp_path / "app.ovf").write_bytes(descriptor("app", [("disk.qcow2", 64 << 20, QCOW2)], nics=0))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.import_appliance(tmp_path / "app.ovf", name="ovl", kernel=guest.kernel, memory_mib=96)
    try:
        assert (vm.spec.disk, vm.spec.overlay, vm.spec.memory_mib, vm.spec.network) == (disk, True, 96, None)
        assert not (tmp_path / "state" / "ovl" / "appliance.qcow2").exists()
    finally:
        vm.destroy()
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == digest


def test_import_refusals(tmp_path: Path, guest_ova: Path) -> None:
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    with pytest.raises(vmctl.InvalidSpec, match="disk"):
        hv.import_appliance(guest_ova, disk=tmp_path)
    with pytest.raises(vmctl.InvalidSpec, match="name"):
        hv.import_appliance(guest_ova, name="../x")
    two = tmp_path / "two.ova"
    ovf = descriptor("two", [("a.vmdk", 1 << 20, STREAM_VMDK), ("b.vmdk", 1 << 20, STREAM_VMDK)])
    ova_build.ova(two, "two.ovf", ovf, [("a.vmdk", b"KDMV"), ("b.vmdk", b"KDMV")])
    with pytest.raises(vmctl.Unsupported, match="2 hard disks"):
        hv.import_appliance(two)
    assert hv.machines(all=True) == []
    assert [p.name for p in (tmp_path / "state").iterdir() if not p.name.startswith(".lock")] == []


def test_memory_backend_imports(guest_ova: Path) -> None:
    hv = vmctl.connect("memory", namespace=f"ova-{os.getpid()}")
    vm = hv.import_appliance(guest_ova, name="mem-ova")
    try:
        assert (vm.spec.memory_mib, vm.spec.cpus, vm.spec.disk) == (160, 2, guest_ova)
        vm.start()
        assert vm.state is vmctl.State.RUNNING
    finally:
        vm.destroy()


@pytest.mark.slow
def test_ova_imports_and_boots_on_libvirt(tmp_path: Path, guest_ova: Path) -> None:
    pytest.importorskip("libvirt")
    from .contract.harness_libvirt import readable_test_guest

    kernel, initrd, _, cmdline = readable_test_guest()  # where libvirt's QEMU user reads them
    state = Path("/var/lib/libvirt/images/vmctl") / f"ova-test-{os.getpid()}"
    hv = vmctl.connect("libvirt", uri="qemu:///system", state_dir=state)
    log = tmp_path / "console.log"
    name = f"ova-lv-{os.getpid()}"
    vm = hv.import_appliance(guest_ova, name, kernel=kernel, initrd=initrd, cmdline=cmdline, serial_log=log, cpus=1)
    try:
        assert (vm.spec.memory_mib, vm.spec.cpus, vm.spec.overlay) == (160, 1, True)
        assert vm.spec.disk is not None and vm.spec.disk.parent == state and vm.spec.disk.name.startswith(name)
        assert {p.name for p in state.iterdir()} >= {vm.spec.disk.name}
        vm.start()
        text = _wait_disk(log, BOOT_TIMEOUT)
        assert b"VMCTL-GUEST DISK mounted" in text, text[-500:]
    finally:
        vm.destroy()
        hv.close()
    assert list(state.iterdir()) == []  # the converted image and the overlay are gone
    state.rmdir()


def test_virtualbox_simulator_imports_through_vboxmanage_import(tmp_path: Path, guest_ova: Path) -> None:
    """Against the VBoxManage SIMULATOR (not VirtualBox): ``VBoxManage import`` of the checked,
    unpacked descriptor, then vmctl's settings; destroy deletes the disk VirtualBox made."""
    from .contract.harness_virtualbox import VirtualBoxSimHarness

    h = VirtualBoxSimHarness()
    h.setup(tmp_path)
    try:
        hv = h.connect()
        with pytest.raises(vmctl.Unsupported, match="kernel"):
            hv.import_appliance(guest_ova, "vb-kernel", kernel=guest_ova)
        vm = hv.import_appliance(guest_ova, "vb-ova", serial_log=tmp_path / "vb.log")
        folder = h.base_folder / "vb-ova"
        disk = folder / "guest-disk1.vmdk"
        with tarfile.open(guest_ova) as tar:
            member = tar.extractfile("guest-disk1.vmdk")
            assert member is not None and disk.read_bytes() == member.read()
        spec = hv.machine("vb-ova").spec  # read back from vmctl's extradata
        assert (spec.disk, spec.memory_mib, spec.cpus, spec.network) == (disk, 160, 2, vmctl.Network())
        info = hv.transport.info("vb-ova")  # type: ignore[attr-defined]
        assert (info.memory_mib, info.cpus) == (160, 2)
        assert [p.name for p in h.base_folder.iterdir() if p.name.startswith(".")] == []  # unpack dir gone
        with pytest.raises(vmctl.MachineExists):
            hv.import_appliance(guest_ova, "vb-ova")
        vm.start()
        assert vm.state is vmctl.State.RUNNING
        vm.destroy()
        assert not disk.exists() and not folder.exists()
    finally:
        h.teardown()


def test_vmrun_simulator_imports_as_a_converted_vmdk_and_a_vmx(tmp_path: Path, guest_ova: Path) -> None:
    """Against the vmrun SIMULATOR (not VMware): vmrun has no import, so the disk is converted to
    a hosted sparse VMDK in the machine's directory and a .vmx written around it."""
    from vmctl_vmware._vmx import VmxFile

    from .contract.harness_vmware import VmwareSimHarness

    h = VmwareSimHarness()
    h.setup(tmp_path)
    try:
        hv = h.connect()
        vm = hv.import_appliance(guest_ova, "vm-ova")
        directory = h.vm_dir / "vm-ova"
        disk = directory / "appliance.vmdk"
        info = json.loads(run_tool(["qemu-img", "info", "--output=json", str(disk)], timeout=30).stdout)
        assert (info["format"], info["format-specific"]["data"]["create-type"]) == ("vmdk", "monolithicSparse")
        vmx = VmxFile.load(directory / "vm-ova.vmx")
        assert (vmx.get("scsi0:0.fileName"), vmx.get("memsize"), vmx.get("numvcpus")) == (str(disk), "160", "2")
        assert (vm.spec.disk, vm.spec.overlay) == (disk, False)
        vm.start()
        assert vm.state is vmctl.State.RUNNING
        vm.poweroff()
        vm.destroy()
        assert not directory.exists()
    finally:
        h.teardown()


def test_the_interface_default_and_its_argument_checks(tmp_path: Path, guest_ova: Path) -> None:
    from vmctl_memory import MemoryHypervisor

    class NoImporter(MemoryHypervisor):  # a third-party backend that implements no import
        name = "no-importer"
        _do_import_appliance = vmctl.Hypervisor._do_import_appliance

    with pytest.raises(vmctl.Unsupported, match="cannot import appliances"):
        NoImporter(namespace="ova-default").import_appliance(guest_ova)
    hv = vmctl.connect("memory", namespace=f"ova-args-{os.getpid()}")
    with pytest.raises(vmctl.InvalidSpec, match="memory_gib"):
        hv.import_appliance(guest_ova, memory_gib=2)
    with pytest.raises(vmctl.InvalidSpec, match="does not exist"):
        hv.import_appliance(tmp_path / "missing.ova")
    not_ovf = tmp_path / "notes.ovf"
    not_ovf.write_text("not xml at all")
    with pytest.raises(InvalidAppliance, match="well-formed"):
        hv.import_appliance(not_ovf)
    assert hv.machines() == []
