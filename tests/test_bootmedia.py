"""Boot media beyond the disk: a CD-ROM image, extra disks attached as they are and a floppy.

The spec's checks and the backends' refusals run without a guest; on QEMU and on a real
libvirtd the test guest loads its CD-ROM and floppy drivers from its share (``media load``), lists
its block devices on the console and reads each medium's marker, and the extra disk keeps what
the guest wrote into it (no overlay).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest
from vmctl_libvirt._xml import DomainPlan, domain_xml
from vmctl_qemu._command import qemu_argv

from .contract.harness import wait_until

ISO_MARK = b"VMCTL-ISO-MARK"
FLOPPY_MARK = b"VMCTL-FLOPPY-MARK"
EXTRA_MARK = b"VMCTL-EXTRA-MARK"
WROTE_MARK = "GUEST-WROTE-THIS"

# The guest's job: load the media drivers, list the block devices, print each medium's marker
# (its first bytes) and write a line into the extra disk's second sector.
RUN_SH = f"""\
media load job sr0 fd0 vdb || true
media list
echo "VMCTL-GUEST CDROM $(dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | head -c {len(ISO_MARK)})"
echo "VMCTL-GUEST FLOPPY $(dd if=/dev/fd0 bs=512 count=1 2>/dev/null | head -c {len(FLOPPY_MARK)})"
echo "VMCTL-GUEST EXTRA $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c {len(EXTRA_MARK)})"
echo {WROTE_MARK} | dd of=/dev/vdb bs=512 seek=1 conv=notrunc 2>/dev/null
sync
echo "VMCTL-GUEST MEDIA-DONE"
"""


def make_media(directory: Path) -> tuple[Path, Path, Path]:
    """An ISO-sized CD image, a raw extra disk and a floppy image of vboxwrapper's 28 KiB, each
    starting with its marker."""
    iso, extra, floppy = directory / "context.iso", directory / "cache.raw", directory / "floppy.img"
    iso.write_bytes(ISO_MARK.ljust(2048 * 16, b"\0"))
    extra.write_bytes(EXTRA_MARK.ljust(1 << 20, b"\0"))
    floppy.write_bytes(FLOPPY_MARK.ljust(28672, b"\0"))
    return iso, extra, floppy


# -- the spec --------------------------------------------------------------------------------------


def test_the_spec_checks_and_records_its_media(tmp_path: Path) -> None:
    iso, extra, floppy = make_media(tmp_path)
    spec = vmctl.MachineSpec(name="m", cdrom=iso, boot_from_cdrom=True, extra_disks=[extra], floppy=floppy)
    assert spec.extra_disks == (extra,) and spec.disk is None, "a CD-ROM alone boots"
    assert vmctl.types.spec_features(spec) == ["cdrom", "extra_disks", "floppy"]
    record = spec.to_dict()
    assert record["extra_disks"] == [str(extra)] and record["boot_from_cdrom"] is True
    assert vmctl.MachineSpec.from_dict(json.loads(json.dumps(record))) == spec
    plain = vmctl.MachineSpec(name="m", disk=extra).to_dict()
    assert "extra_disks" not in plain and "boot_from_cdrom" not in plain, "records of older specs stay as they were"

    bad: list[tuple[dict[str, object], str]] = [
        ({"cdrom": tmp_path / "missing.iso"}, "cdrom"),
        ({"floppy": tmp_path}, "floppy"),
        ({"disk": extra, "boot_from_cdrom": True}, "boot_from_cdrom"),
        ({"disk": extra, "boot_from_cdrom": "yes", "cdrom": iso}, "boot_from_cdrom"),
        ({"disk": extra, "extra_disks": str(extra)}, "extra_disks"),
        ({"disk": extra, "extra_disks": [extra]}, "extra_disks"),
        ({"cdrom": iso, "floppy": iso}, "floppy"),
        ({"cdrom": iso, "extra_disks": [extra] * 17}, "extra_disks"),
    ]
    for fields, label in bad:
        with pytest.raises(vmctl.InvalidSpec, match=label):
            vmctl.MachineSpec(name="m", **fields)  # type: ignore[arg-type]


def test_the_qemu_argv_and_libvirt_xml_carry_the_media(tmp_path: Path) -> None:
    iso, extra, floppy = make_media(tmp_path)
    spec = vmctl.MachineSpec(name="m", cdrom=iso, boot_from_cdrom=True, extra_disks=[extra], floppy=floppy)
    argv = qemu_argv(
        spec,
        binary="qemu-system-x86_64",
        accel="tcg",
        machine_type="q35",
        disk=None,
        disk_format="qcow2",
        serial_log=tmp_path / "log",
        extra_disk_formats=["raw"],
    )
    nodes = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert [(n["node-name"], n["driver"], n.get("read-only", False)) for n in nodes] == [
        ("xdisk0", "raw", False),
        ("cdrom0", "raw", True),
        ("floppy0", "raw", False),
    ]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert "ide-cd,bus=ide.1,drive=cdrom0,id=cd0,bootindex=0" in devices
    assert "isa-fdc,id=fdc0" in devices and "floppy,unit=0,drive=floppy0,id=fd0" in devices
    with pytest.raises(ValueError):
        qemu_argv(spec, binary="q", accel="tcg", machine_type="q35", disk=None, disk_format="raw", serial_log=iso)

    plan = DomainPlan("qemu", "00000000-0000-0000-0000-000000000001", None, "qcow2", None, {}, "q35", ("vdi",))
    dom = ET.fromstring(domain_xml(spec, plan))  # noqa: S314 - our own output
    assert [b.get("dev") for b in dom.iterfind("os/boot")] == ["cdrom", "hd"]
    disks = {d.get("device"): d for d in dom.iterfind("devices/disk")}
    assert disks["disk"].find("driver").get("type") == "vdi"  # type: ignore[union-attr]
    assert disks["disk"].find("source").get("file") == str(extra)  # type: ignore[union-attr]
    assert disks["cdrom"].find("readonly") is not None
    assert disks["cdrom"].find("target").get("bus") == "sata"  # type: ignore[union-attr]
    assert disks["floppy"].find("target").get("dev") == "fda"  # type: ignore[union-attr]


# -- a real guest ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


def _console(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def check_guest_saw_media(log: Path, extra: Path) -> None:
    wait_until(lambda: "VMCTL-GUEST MEDIA-DONE" in _console(log), 90, "the guest's media job")
    text = _console(log)
    assert "VMCTL-GUEST MEDIA sr0 bytes=32768 ro=1" in text, text[-2000:]
    assert "VMCTL-GUEST MEDIA fd0 " in text and "VMCTL-GUEST MEDIA vdb bytes=1048576 ro=0" in text
    assert f"VMCTL-GUEST CDROM {ISO_MARK.decode()}" in text
    assert f"VMCTL-GUEST FLOPPY {FLOPPY_MARK.decode()}" in text
    assert f"VMCTL-GUEST EXTRA {EXTRA_MARK.decode()}" in text
    wait_until(lambda: WROTE_MARK.encode() in extra.read_bytes()[512:1024], 10, "the guest's write to the extra disk")


@pytest.mark.slow
def test_a_qemu_guest_sees_the_cdrom_the_floppy_and_the_extra_disk(tmp_path: Path, guest: TestGuest) -> None:
    iso, extra, floppy = make_media(tmp_path)
    share = tmp_path / "share"
    share.mkdir()
    (share / "run.sh").write_text(RUN_SH)
    assert guest.media_modules is not None
    shutil.copyfile(guest.media_modules, share / "media-modules.tar")
    iso.chmod(0o444)
    before = iso.read_bytes()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    log = tmp_path / "console.log"
    vm = hv.create(
        vmctl.MachineSpec(
            name="media",
            disk=guest.disk,
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=guest.cmdline + " vmctl.share=job",
            memory_mib=160,
            shared_dirs={"job": share},
            serial_log=log,
            cdrom=iso,
            extra_disks=[extra],
            floppy=floppy,
        )
    )
    try:
        assert not vm.capabilities.snapshots, "a snapshot would not hold the extra disk"
        with pytest.raises(vmctl.Unsupported, match="extra disks"):
            vm.snapshots()
        vm.start()
        check_guest_saw_media(log, extra)
        assert iso.read_bytes() == before
    finally:
        vm.destroy()
    assert extra.exists() and floppy.exists() and iso.exists(), "the caller's images stay"


@pytest.fixture
def libvirt_dir() -> Iterator[Path]:
    pytest.importorskip("libvirt")
    from .contract.harness_libvirt import load_services

    load_services().ensure_libvirtd()
    directory = Path(tempfile.mkdtemp(prefix="vmctl-media-", dir="/var/lib/libvirt/images"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_a_libvirt_guest_sees_the_cdrom_the_floppy_and_the_extra_disk(libvirt_dir: Path) -> None:
    from .contract.harness_libvirt import readable_test_guest

    kernel, initrd, disk, cmdline = readable_test_guest()
    iso, extra, floppy = make_media(libvirt_dir)
    for path in (iso, extra, floppy):
        path.chmod(0o644)
    (libvirt_dir / "run.sh").write_text(RUN_SH)
    media_modules = ensure_test_guest().media_modules
    assert media_modules is not None
    shutil.copyfile(media_modules, libvirt_dir / "media-modules.tar")
    name = f"media-{time.monotonic_ns() % 10**8}"
    hv = vmctl.connect("libvirt", uri="qemu:///system", state_dir=Path("/var/lib/libvirt/images/vmctl"))
    log = libvirt_dir / "console.log"
    vm = hv.create(
        vmctl.MachineSpec(
            name=name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline + " vmctl.share=job",
            memory_mib=160,
            shared_dirs={"job": libvirt_dir},
            serial_log=log,
            cdrom=iso,
            extra_disks=[extra],
            floppy=floppy,
        )
    )
    try:
        assert not vm.capabilities.snapshots
        vm.start()
        check_guest_saw_media(log, extra)
    finally:
        vm.destroy()
        hv.close()
