"""``vmctl.screenshot``'s PNG helpers, and QEMU machines that have no screen to read (the contract
suite checks screenshots of machines that have one: ``-k screenshot``)."""

from __future__ import annotations

import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

import vmctl
from tests.vcsim import Vcsim, vcsim_fixture
from vmctl.errors import BackendError
from vmctl.screenshot import PNG_SIGNATURE, Screenshot, as_png, encode_png, png_from_ppm, read_bounded
from vmctl.testing._png import colours, pixel_rows
from vmctl_qemu._screenshot import display_argv
from vmctl_vsphere._machine import split_datastore_path


def test_encode_and_read_back() -> None:
    rgb = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    png = encode_png(2, 2, rgb)
    assert pixel_rows(png) == [rgb[:6], rgb[6:]]
    assert colours(png) == 4
    shot = Screenshot(png)
    assert (shot.width, shot.height) == (2, 2)
    assert repr(shot) == f"<Screenshot 2x2 PNG, {len(png)} bytes>"
    with pytest.raises(ValueError):
        encode_png(2, 2, rgb[:-1])


def test_ppm_is_converted(tmp_path: Path) -> None:
    ppm = b"P6\n# QEMU\n3 1\n255\n" + bytes([1, 2, 3, 4, 5, 6, 7, 8, 9])
    png = as_png(ppm)
    assert pixel_rows(png) == [bytes(range(1, 10))]
    for bad in (b"P6\n3 1\n255\n" + bytes(8), b"P6\n3 1\n65535\n" + bytes(18), b"P3\n1 1\n255\n0 0 0\n", b"P6\n3"):
        with pytest.raises(BackendError):
            png_from_ppm(bad)
    with pytest.raises(BackendError):
        as_png(b"GIF89a")


def test_damaged_or_absurd_pngs_are_refused() -> None:
    png = encode_png(1, 1, b"\0\0\0")
    with pytest.raises(BackendError, match="damaged IHDR"):
        Screenshot(png[:20] + b"\xff" + png[21:])
    header = struct.pack(">IIBBBBB", 100000, 1, 8, 2, 0, 0, 0)
    huge = PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    with pytest.raises(BackendError, match="not a screen's"):
        Screenshot(huge)
    with pytest.raises(BackendError, match="no IHDR"):
        Screenshot(PNG_SIGNATURE + b"\0" * 30)


def test_read_bounded_refuses_links_special_files_and_big_files(tmp_path: Path) -> None:
    real = tmp_path / "real.png"
    real.write_bytes(b"x" * 100)
    assert read_bounded(real, 100) == b"x" * 100
    with pytest.raises(BackendError, match="larger than 99"):
        read_bounded(real, 99)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    with pytest.raises(BackendError, match="cannot open"):
        read_bounded(link)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(BackendError, match="not a regular file"):
        read_bounded(fifo)
    with pytest.raises(BackendError, match="wrote no screenshot"):
        read_bounded(tmp_path / "missing.png")


def test_a_qemu_machine_made_before_screenshots_refuses_them(tmp_path: Path) -> None:
    disk = tmp_path / "base.img"
    disk.write_bytes(b"")
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(vmctl.MachineSpec(name="old", disk=disk, overlay=False))
    record = hv.store.read("old")  # type: ignore[attr-defined]
    assert display_argv(record) == ["-device", "VGA,id=video0"]
    del record["display"]  # as an earlier vmctl wrote it: its saved states hold no VGA
    hv.store.write("old", record)  # type: ignore[attr-defined]
    assert display_argv(hv.store.read("old")) == []  # type: ignore[attr-defined]
    assert vm.capabilities.screenshot is False
    with pytest.raises(vmctl.Unsupported, match="no display adapter"):
        vm.screenshot()
    vm.destroy()


def test_an_adopted_qemu_without_a_display_refuses_screenshots(tmp_path: Path) -> None:
    qmp = tmp_path / "qmp.sock"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-S", "-m", "64",
         "-qmp", f"unix:{qmp},server=on,wait=off"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert time.monotonic() < deadline, "QEMU opened no monitor"
            time.sleep(0.01)
        hv = vmctl.connect("qemu", state_dir=tmp_path / "state")
        vm = hv.adopt("nodisplay", qmp=qmp)  # type: ignore[attr-defined]
        assert vm.state in (vmctl.State.PAUSED, vmctl.State.RUNNING)
        with pytest.raises(vmctl.Unsupported, match="no display adapter"):
            vm.screenshot()
        vm.destroy()
    finally:
        qemu.kill()
        qemu.wait()


vcsim = vcsim_fixture(vms=0)


def test_vsphere_downloads_datastore_files_bounded(vcsim: Vcsim) -> None:
    """What a vSphere screenshot is read through (vcsim lacks ``CreateScreenshot_Task`` itself:
    the contract suite expects ``Unsupported`` there): a bounded GET of a datastore file."""
    hv = vcsim.connect(folder="screens")
    try:
        _, datastore = hv._pick_datastore()
        png = encode_png(4, 3, bytes(36))
        hv.session.upload(hv.datacenter_path, datastore, "vmctl-screen-test.png", png, 30)
        assert hv.session.download(hv.datacenter_path, datastore, "vmctl-screen-test.png", len(png), 30) == png
        with pytest.raises(BackendError, match="larger than"):
            hv.session.download(hv.datacenter_path, datastore, "vmctl-screen-test.png", len(png) - 1, 30)
        with pytest.raises(BackendError, match="HTTP 404"):
            hv.session.download(hv.datacenter_path, datastore, "vmctl-screen-none.png", 100, 30)
        hv.delete_datastore_path(datastore, "vmctl-screen-test.png", 30)
    finally:
        hv.close()
    assert split_datastore_path("[datastore1] vm 1/vm 1-1.png") == ("datastore1", "vm 1/vm 1-1.png")
    for bad in ("datastore1 x.png", "[] x.png", "[ds] ", "[ds] ../x.png"):
        with pytest.raises(BackendError):
            split_datastore_path(bad)
