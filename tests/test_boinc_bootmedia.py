"""vboxwrapper's media keys: ``enable_isocontextualization`` (the slot's vm_isocontext.iso as a
CD-ROM, no disk image), ``enable_cache_disk`` (the slot's vm_cache.vdi as a second disk kept in
the slot), ``boot_iso`` and ``enable_floppyio`` (vm_floppy_<slot>.img in floppyio.cpp's layout,
with init_data.xml or CERN's data format). The memory backend stands in for QEMU (it keeps the
spec); a backend without the media fails the task at once (206) naming the keys and itself.
tests/test_boinc_realjobs_qemu.py runs a boinc2docker job on QEMU with the test guest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vmctl.boinc._bootmedia import FLOPPY_SIZE, cern_data, floppy_image
from vmctl.boinc.adapter import EXIT_INIT_FAILURE
from vmctl.boinc.initdata import InitData, read_init_data
from vmctl.boinc.job import parse_vbox_xml
from vmctl.boinc.slot import TEMPORARY_EXIT_FILE

from .test_boinc_adapter import Env, make_env

ISO_JOB = """<vbox_job><memory_size_mb>1024</memory_size_mb><enable_isocontextualization>1</enable_isocontextualization>
<enable_cache_disk>1</enable_cache_disk>{extra}<enable_network/></vbox_job>"""
FLOPPY_JOB = "<vbox_job><multiattach_vdi_file>base.vdi</multiattach_vdi_file><enable_floppyio/>{extra}</vbox_job>"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        (e.slot / "vmctl_job.toml").unlink()
        yield e


def link(env: Env, name: str, data: bytes = b"\x00" * 65536) -> Path:
    """The app version's file ``name`` in the project directory, linked into the slot."""
    (env.project / name).write_bytes(data)
    (env.slot / name).write_text(f"<soft_link>../../projects/p/{name}</soft_link>\n")
    return env.project / name


# -- floppyio.cpp's layout and set_floppy_image's data ---------------------------------------------


def test_the_floppy_image_is_floppyio_cpps_layout_byte_for_byte() -> None:
    image = floppy_image(b"hello")
    assert len(image) == FLOPPY_SIZE == 28672
    assert image[:5] == b"hello" and image[5:28670] == bytes(28665)
    assert image[28670] == 1, "'data available for guest' (ofsCtrlByteOut = 2 * (28672 / 2 - 1))"
    assert image[28671] == 0, "'data available for hypervisor' stays clear"
    long = floppy_image(b"x" * 20000)
    assert long[:14334] == b"x" * 14334 and long[14334] == 0, "send() trims to szOutput - 1 = 14334 bytes"
    assert long[14335:28670] == bytes(14335), "the guest's buffer is zero"


def test_the_cern_data_format_is_set_floppy_images_lines() -> None:
    init = InitData(
        user_name="Ann Example",
        authenticator="abc123",
        userid=42,
        hostid=7,
        user_total_credit=1234.5,
        host_total_credit=0.1,
    )
    assert cern_data(init) == (
        "BOINC_USERNAME=Ann Example\nBOINC_AUTHENTICATOR=abc123\nBOINC_USERID=42\nBOINC_HOSTID=7\n"
        "BOINC_USER_TOTAL_CREDIT=1234.5\nBOINC_HOST_TOTAL_CREDIT=0.10000000000000001\n"
    ), "%.17g for the credits, as vboxwrapper.cpp"
    assert "\nBOINC_AUTHENTICATOR=x\n" not in cern_data(replace(init, user_name="a\nBOINC_AUTHENTICATOR=x"))
    assert "abc123" not in repr(init), "the authenticator is kept out of logs"


# -- parsing ---------------------------------------------------------------------------------------


def test_the_media_keys_parse_as_vboxwrapper_attaches_them() -> None:
    job = parse_vbox_xml(ISO_JOB.format(extra="<boot_iso/>"))
    assert (job.cdrom, job.cache_disk, job.boot_cdrom, job.image) == ("vm_isocontext.iso", "vm_cache.vdi", True, None)
    alone = parse_vbox_xml("<vbox_job><enable_cache_disk/><boot_iso/><enable_cern_dataformat/></vbox_job>")
    assert (alone.cdrom, alone.cache_disk, alone.boot_cdrom, alone.image) == (None, None, False, "vm_image.vdi")
    assert {n.split(":")[0] for n in alone.notes} == {"enable_cache_disk", "boot_iso", "enable_cern_dataformat"}
    floppy = parse_vbox_xml(FLOPPY_JOB.format(extra="<enable_cern_dataformat/>"))
    assert floppy.floppy and floppy.cern_dataformat and floppy.refused == ()
    assert not parse_vbox_xml("<vbox_job><enable_floppyio>0</enable_floppyio></vbox_job>").floppy


# -- the adapter -----------------------------------------------------------------------------------


def test_an_iso_job_gets_the_iso_and_its_own_cache_disk_kept_across_restarts(env: Env) -> None:
    env.write_job(text=ISO_JOB.format(extra="<boot_iso/>"), name="vbox_job.xml")
    iso = link(env, "vm_isocontext.iso", b"ISO" * 1000)
    cache = link(env, "vm_cache.vdi", b"project's cache disk")
    adapter = env.adapter()
    assert adapter.start() is None
    spec = env.vm().spec
    assert spec.disk is None and spec.cdrom == iso and spec.boot_from_cdrom
    own = env.slot / "vmctl_vm_cache.vdi"
    assert spec.extra_disks == (own,), "the slot's own copy: the project's file is every task's"
    assert own.read_bytes() == cache.read_bytes()

    own.write_bytes(b"what the guest wrote")  # the VM writes the cache disk in place
    assert env.send(adapter, "<quit/>") == 0
    env.vm().destroy()  # the VM is gone (the host rebooted): the task makes it again
    assert env.adapter().start() is None
    assert env.vm().spec.extra_disks == (own,)
    assert own.read_bytes() == b"what the guest wrote", "kept across restarts, never copied again"
    assert cache.read_bytes() == b"project's cache disk"


def test_a_cache_disk_the_client_copied_into_the_slot_is_used_in_place(env: Env) -> None:
    env.write_job(text=ISO_JOB.format(extra=""), name="vbox_job.xml")
    link(env, "vm_isocontext.iso")
    (env.slot / "vm_cache.vdi").write_bytes(b"\x00" * 4096)  # <copy_file/>
    assert env.adapter().start() is None
    assert env.vm().spec.extra_disks == (env.slot / "vm_cache.vdi",)
    assert not (env.slot / "vmctl_vm_cache.vdi").exists()


def test_a_missing_iso_fails_the_task_at_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.write_job(text=ISO_JOB.format(extra=""), name="vbox_job.xml")
    link(env, "vm_cache.vdi")
    caplog.set_level("INFO", logger="vmctl")
    assert env.adapter().start() == EXIT_INIT_FAILURE
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists(), "never a temporary exit retried for hours"
    assert "enable_isocontextualization" in caplog.text and "vm_isocontext.iso" in caplog.text
    assert env.hv.machines() == []


@pytest.mark.parametrize("cern", [False, True])
def test_the_floppy_carries_init_data_or_the_cern_format(env: Env, cern: bool) -> None:
    env.write_job(text=FLOPPY_JOB.format(extra="<enable_cern_dataformat/>" if cern else ""), name="vbox_job.xml")
    link(env, "base.vdi")
    env.client.write_init_data(slot=3, user_name="Ann", userid=42, hostid=7, user_total_credit=1234.5)
    assert env.adapter().start() is None
    floppy = env.slot / "vm_floppy_3.img"
    assert env.vm().spec.floppy == floppy
    assert floppy.stat().st_mode & 0o077 == 0, "private: it may carry the authenticator"
    if cern:
        data = cern_data(read_init_data(env.slot)).encode()
        assert data.startswith(b"BOINC_USERNAME=Ann\nBOINC_AUTHENTICATOR=0123456789abcdef\nBOINC_USERID=42\n")
        assert b"BOINC_USER_TOTAL_CREDIT=1234.5\n" in data
    else:
        data = (env.slot / "init_data.xml").read_bytes()
    assert floppy.read_bytes() == floppy_image(data)


def test_a_backend_without_the_media_names_the_keys_and_itself(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vmctl_memory import MemoryHypervisor

    original = MemoryHypervisor.capabilities.fget
    assert original is not None
    monkeypatch.setattr(
        MemoryHypervisor,
        "capabilities",
        property(lambda self: replace(original(self), cdrom=False, extra_disks=False, floppy=False)),
    )
    env.write_job(text=ISO_JOB.format(extra="<boot_iso/><enable_floppyio/>"), name="vbox_job.xml")
    link(env, "vm_isocontext.iso")
    link(env, "vm_cache.vdi")
    caplog.set_level(logging.INFO, logger="vmctl")
    assert env.adapter().start() == EXIT_INIT_FAILURE
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists()
    assert (
        "the qemu backend cannot attach what the job file's enable_isocontextualization, boot_iso, "
        "enable_cache_disk, enable_floppyio give the guest" in caplog.text
    )
    assert env.hv.machines() == []


def test_vmctl_job_toml_names_the_media_too(env: Env) -> None:
    from vmctl.boinc.job import JobError, parse_toml

    job = parse_toml('cdrom = "ctx.iso"\nboot_cdrom = true\ncache_disk = "cache.qcow2"\nfloppy = true\n')
    assert (job.cdrom, job.boot_cdrom, job.cache_disk, job.floppy, job.image) == (
        "ctx.iso",
        True,
        "cache.qcow2",
        True,
        None,
    )
    for bad in ('cdrom = "../ctx.iso"', 'image = "a"\ncache_disk = "/etc/disk"', 'image = "a"\nboot_cdrom = true'):
        with pytest.raises(JobError):
            parse_toml(bad)
    env.write_job(text='image = "vm_image.img"\ncache_disk = "cache.qcow2"\nfloppy = true\n')
    (env.slot / "cache.qcow2").write_bytes(b"\x00" * 4096)
    assert env.adapter().start() is None
    spec = env.vm().spec
    assert spec.extra_disks == (env.slot / "cache.qcow2",) and spec.floppy == env.slot / "vm_floppy_0.img"
    assert spec.disk is not None and spec.cdrom is None


def test_a_cern_job_at_its_duration_says_so_in_its_output(env: Env) -> None:
    """vboxwrapper.cpp: job_duration reached with enable_cern_dataformat writes "Work Unit
    completed!" to ``output`` (the result's file the slot links to)."""
    from vmctl.boinc.slot import FINISH_FILE

    env.write_job(
        text=FLOPPY_JOB.format(extra="<enable_cern_dataformat/><job_duration>30</job_duration>"), name="vbox_job.xml"
    )
    link(env, "base.vdi")
    result = link(env, "output_0", b"")
    (env.slot / "output").write_text("<soft_link>../../projects/p/output_0</soft_link>\n")
    adapter = env.adapter()
    assert adapter.start() is None
    assert env.run(adapter, 40) == 0
    assert (env.slot / FINISH_FILE).read_text() == "0\n"
    assert result.read_text() == "Work Unit completed!\n"
