"""Real projects' vbox_job.xml files (tests/realworld/jobs/, each naming its source) against what
vboxwrapper at BOINC's HEAD does with them: each parses to the VM its project meant (memory, disk,
CPUs, ports, shares), or fails at the task's start (206) naming what cannot be given; the image
of a multiattach job is found where vboxwrapper finds it; the host ports are picked free; the
task ends at job_duration; a job that needs hardware virtualization says
ERR_CPU_VM_EXTENSIONS_DISABLED where it is missing. The memory backend stands in for QEMU in the
unit tests; tests/test_boinc_realjobs_qemu.py runs two of the jobs on QEMU with the test guest.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmctl.boinc import _hostcheck
from vmctl.boinc.adapter import EXIT_INIT_FAILURE
from vmctl.boinc.hostconfig import Profile
from vmctl.boinc.job import VBOX_KEYS, VBOX_OPTIONS, JobError, load_job
from vmctl.boinc.slot import FINISH_FILE, STATE_FILE, TEMPORARY_EXIT_FILE

from .test_boinc_adapter import Env, make_env

JOBS = Path(__file__).parent / "realworld" / "jobs"
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "boinc.md"

#: The keys samples/vboxwrapper/vboxjob.cpp parses (VBOX_JOB::parse) at BOINC's HEAD,
#: c5c6cb79b9aa4747d80d066e3627c22f2c124144 (2026-08-21).
VBOXWRAPPER_KEYS = frozenset(
    """vm_disk_controller_type vm_disk_controller_model os_name vram_size_mb memory_size_mb job_duration
    minimum_checkpoint_interval minimum_heartbeat_interval fraction_done_filename heartbeat_filename
    completion_trigger_file temporary_exit_trigger_file multiattach_vdi_file enable_cern_dataformat
    vm_network_driver enable_network network_bridged_mode enable_nat_dns_host_resolver enable_shared_directory
    enable_scratch_directory share_slot_dir share_project_dir enable_floppyio enable_cache_disk
    enable_isocontextualization enable_remotedesktop enable_screenshots_on_error enable_graphics_support
    enable_vm_savestate_usage disable_automatic_checkpoints boot_iso pf_guest_port pf_host_port copy_to_shared
    copy_cmdline_to_shared trickle_trigger_file intermediate_upload_file port_forward""".split()
)
#: vboxwrapper.cpp's main() options at the same commit.
VBOXWRAPPER_OPTIONS = frozenset(
    ["--trickle", "--nthreads", "--memory_size_mb", "--vmimage", "--register_only", "--sporadic"]
)

# What each project meant: the VM's memory, its base image (physical name in the project
# directory for a multiattach job, else the slot's name), guest ports forwarded, shares, and the
# keys that must fail the task at its start.
EXPECTED: dict[str, dict[str, Any]] = {
    "boinc_samples_worker.xml": {
        "memory": 512,
        "image": ("project", "vm_image_x64_1.vdi"),
        "logical": "vm_image.vdi",
        "ports": [],
        "shares": {"shared": False, "project": True},
        "refused": set(),
    },
    "lhcathome_cms.xml": {
        "memory": 2048,
        "image": ("project", "CMS.vdi"),
        "ports": [80],
        "shares": {"shared": False},
        "copy": ("init_data.xml",),
        "job_duration": 64800.0,
        "heartbeat": ("heartbeat", 1200.0),
        "completion": "shutdown",
        "checkpoints": False,
        "refused": set(),
        "graphics": (80, True),
    },
    "lhcathome_theory.xml": {
        "memory": 630,
        "image": ("project", "Theory.vdi"),
        "ports": [80],
        "shares": {"shared": False},
        "copy": ("init_data.xml", "input"),
        "job_duration": 864000.0,
        "heartbeat": ("heartbeat", 1800.0),
        "completion": "shutdown",
        "checkpoints": False,
        "refused": set(),
        "graphics": (80, True),
    },
    # boinc2docker (Cosmology@home): the ISO is the VM's boot medium and no disk image is attached
    # (vbox_vboxmanage.cpp), the cache disk is the second disk
    "boinc2docker_app.xml": {
        "memory": 1024,
        "image": None,
        "cdrom": True,
        "cache": True,
        "network": True,
        "ports": [],
        "shares": {"shared": False},
        "refused": set(),
    },
    "boinc2docker_example.xml": {
        "memory": 1024,
        "image": None,
        "cdrom": True,
        "cache": False,
        "network": True,
        "ports": [],
        "shares": {"shared": False, "scratch": False},
        "completion": "completion_trigger_file",
        "checkpoints": False,
        "refused": set(),
    },
    "boinc2docker_x86_64.xml": {
        "memory": 1024,
        "image": None,
        "cdrom": True,
        "cache": True,
        "network": True,
        "ports": [],
        "shares": {"shared": False, "scratch": False},
        "completion": "completion_trigger_file",
        "refused": set(),
    },
    "cosmology_issue_1365.xml": {
        "memory": 1024,
        "image": None,
        "cdrom": True,
        "cache": True,
        "network": True,
        "ports": [],
        "shares": {"shared": False},
        "refused": set(),
    },
    "boinc2docker_template.xml": {"error": "<memory_size_mb> must be a number, not '{memory}'"},
}


def corpus() -> list[Path]:
    return sorted(JOBS.glob("*.xml"))


def test_the_corpus_is_the_expected_one() -> None:
    assert [p.name for p in corpus()] == sorted(EXPECTED)
    for path in corpus():
        head = path.read_text()[:600]
        assert "source:" in head, f"{path.name} names its source"
        assert re.search(r"commit [0-9a-f]{40}|https://github\.com/\S+/issues/\d+", head), path.name


# -- what vboxwrapper reads, row by row ------------------------------------------------------------


def test_every_key_and_option_of_vboxwrapper_has_its_row() -> None:
    assert set(VBOX_KEYS) == VBOXWRAPPER_KEYS
    assert set(VBOX_OPTIONS) == VBOXWRAPPER_OPTIONS
    for meaning in (*VBOX_KEYS.values(), *VBOX_OPTIONS.values()):
        assert meaning.split(":")[0].split()[0] in ("honoured", "partial", "refused", "ignored"), meaning


def test_the_guide_lists_every_option_with_its_treatment() -> None:
    text = GUIDE.read_text()
    table = text.split("<!-- vbox options:", 1)[1].split("<!-- end vbox options -->", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert rows == dict(VBOX_OPTIONS)
    counts = {
        t: sum(m.startswith(t) for m in VBOX_KEYS.values()) for t in ("honoured", "partial", "refused", "ignored")
    }
    assert (
        f"Today: {counts['honoured']} honoured, {counts['partial']} partial, {counts['refused']} refused, "
        f"{counts['ignored']} ignored" in text
    )


# -- parsing: what each project asked for ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_real_job_file_parses_to_what_its_project_meant(name: str) -> None:
    want = EXPECTED[name]
    if "error" in want:
        with pytest.raises(JobError) as info:
            load_job(JOBS / name)
        assert want["error"] in str(info.value)
        return
    job = load_job(JOBS / name)
    assert job.memory_mib == want["memory"]
    assert {r.split(":")[0] for r in job.refused} == want["refused"]
    assert job.needs_acceleration, "every one is a 64-bit VM type (Linux26_64)"
    if want["refused"]:
        return
    if want["image"] is None:
        assert (job.image, job.image_in_project) == (None, False), "no disk image beside the ISO, as vboxwrapper"
    else:
        where, image = want["image"]
        assert (job.image, job.image_in_project) == (image, where == "project")
    assert job.cdrom == ("vm_isocontext.iso" if want.get("cdrom") else None)
    assert job.cache_disk == ("vm_cache.vdi" if want.get("cache") else None)
    assert not job.boot_cdrom and not job.floppy
    assert [pf.guest_port for pf in job.port_forwards] == want["ports"]
    assert all(pf.host_port == 0 for pf in job.port_forwards), "never the literal host port (7859)"
    assert job.network == want.get("network", bool(want["ports"]))
    shares = want["shares"]
    assert job.shared_dir or job.share_slot_dir
    assert job.share_project_dir == shares.get("project", False)
    assert job.copy_to_shared == want.get("copy", ())
    assert job.job_duration == want.get("job_duration", 0.0)
    if "heartbeat" in want:
        assert (job.heartbeat_file, job.heartbeat_interval) == want["heartbeat"]
    assert job.completion_trigger_file == want.get("completion")
    assert job.checkpoints == want.get("checkpoints", True)
    assert {n.split(":")[0] for n in job.notes} == want.get("notes", set())
    # the web graphics port (pf_guest_port) and the remote desktop the Manager's buttons use
    assert (job.web_graphics_guest_port, job.remote_desktop) == want.get("graphics", (0, False))


def test_pf_host_port_and_port_forward_host_ports_are_never_bound_literally() -> None:
    job = load_job(JOBS / "lhcathome_cms.xml")
    assert job.port_forwards[0].host_port == 0
    from vmctl.boinc.job import parse_vbox_xml

    job = parse_vbox_xml(
        "<vbox_job><enable_network/><port_forward><host_port>8080</host_port><guest_port>80</guest_port>"
        "<nports>2</nports></port_forward></vbox_job>"
    )
    assert [(pf.guest_port, pf.host_port) for pf in job.port_forwards] == [(80, 0), (81, 0)]


def test_a_multiattach_name_must_be_a_file_in_the_project_directory() -> None:
    from vmctl.boinc.job import parse_vbox_xml

    for bad in ("sub/disk.vdi", "../disk.vdi", "/etc/disk.vdi"):
        with pytest.raises(JobError, match="multiattach_vdi_file"):
            parse_vbox_xml(f"<vbox_job><multiattach_vdi_file>{bad}</multiattach_vdi_file></vbox_job>")


# -- the adapter: the app version's layout in a slot, the VM made from it --------------------------

TCG = Profile("qemu", "qemu", {"accel": "tcg"})


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        (e.slot / "vmctl_job.toml").unlink()
        yield e


def lay_out(env: Env, name: str, text: str | None = None) -> dict[str, Any]:
    """The slot and project directory as the client lays out the app version of ``name``: the
    job file and the image under their physical names in the project directory, links in the
    slot (a multiattach image without copy_file, under its logical name where the app version
    gives one)."""
    want = EXPECTED[name]
    env.write_job(text=text if text is not None else (JOBS / name).read_text(), name="vbox_job.xml")
    media = [
        *(["vm_isocontext.iso"] if want.get("cdrom") else []),
        *(["vm_cache.vdi"] if want.get("cache") else []),
    ]
    if want.get("image") is not None:
        media.append(want.get("image", ("slot", "vm_image.vdi"))[1])
    for image in media:
        (env.project / image).write_bytes(b"\x00" * 65536)
        open_name = want.get("logical", image)
        (env.slot / open_name).write_text(f"<soft_link>../../projects/p/{image}</soft_link>\n")
    for copied in want.get("copy", ()):
        if not (env.slot / copied).exists():
            (env.project / f"{copied}_1").write_text("input\n")
            (env.slot / copied).write_text(f"<soft_link>../../projects/p/{copied}_1</soft_link>\n")
    return want


@pytest.mark.parametrize("name", [n for n, w in EXPECTED.items() if "error" not in w])
def test_each_real_job_makes_the_vm_its_project_meant_or_fails_at_once(
    env: Env, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    want = lay_out(env, name)
    caplog.set_level("INFO", logger="vmctl")
    adapter = env.adapter(profile=TCG)
    code = adapter.start()
    if want["refused"]:
        assert code == EXIT_INIT_FAILURE, "fails at once: the guest would wait for its ISO or cache disk"
        assert not (env.slot / TEMPORARY_EXIT_FILE).exists(), "never a temporary exit retried for hours"
        assert env.hv.machines() == []
        (message,) = [r.getMessage() for r in caplog.records if "cannot give the guest" in r.getMessage()]
        assert "qemu backend" in message
        for key in want["refused"]:
            assert key in message
        return
    assert code is None, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    spec = env.vm().spec
    assert spec.memory_mib == want["memory"] and spec.cpus == 1
    if want["image"] is None:
        assert spec.disk is None and spec.cdrom == env.project / "vm_isocontext.iso", "the ISO, read where it is"
        assert spec.extra_disks == ((env.slot / "vmctl_vm_cache.vdi",) if want["cache"] else ())
    else:
        assert spec.disk == env.project / want["image"][1], "the project's file, as vboxwrapper resolves it"
        assert spec.cdrom is None and spec.extra_disks == ()
    assert spec.overlay, "never copied: the VM writes to an overlay"
    assert spec.floppy is None
    assert set(spec.shared_dirs) == set(want["shares"])
    assert spec.shared_dirs["shared"] == env.slot / "shared"
    assert {t for t, ro in want["shares"].items() if ro} == set(spec.readonly_shares)
    ports = [] if spec.network is None else spec.network.port_forwards
    assert [pf.guest_port for pf in ports] == want["ports"]
    for pf in ports:
        assert pf.host_port not in (0, 7859), "a port picked free, not the template's literal 7859"
        assert f"guest port {pf.guest_port} is reachable at 127.0.0.1:{pf.host_port}" in caplog.text
    for copied in want.get("copy", ()):
        assert (env.slot / "shared" / copied).is_file()


def test_the_worker_sample_finds_its_image_under_its_physical_name(env: Env) -> None:
    """BOINC's samples/worker: the slot has vm_image.vdi (the logical name), vbox_job.xml names
    the physical vm_image_x64_1.vdi, which only the project directory has."""
    lay_out(env, "boinc_samples_worker.xml")
    assert not (env.slot / "vm_image_x64_1.vdi").exists()
    adapter = env.adapter(profile=TCG)
    assert adapter.start() is None, "not 'image missing' and a retry"
    assert env.vm().spec.disk == env.project / "vm_image_x64_1.vdi"


def test_a_multiattach_image_missing_from_the_project_fails_at_once(env: Env) -> None:
    lay_out(env, "boinc_samples_worker.xml")
    (env.project / "vm_image_x64_1.vdi").unlink()
    assert env.adapter(profile=TCG).start() == EXIT_INIT_FAILURE
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists()


def test_a_multiattach_image_linking_out_of_the_project_is_refused(env: Env, tmp_path: Path) -> None:
    lay_out(env, "boinc_samples_worker.xml")
    outside = tmp_path / "secret.vdi"
    outside.write_bytes(b"\x00" * 512)
    (env.project / "vm_image_x64_1.vdi").unlink()
    (env.project / "vm_image_x64_1.vdi").symlink_to(outside)
    assert env.adapter(profile=TCG).start() == EXIT_INIT_FAILURE
    assert env.hv.machines() == []


def test_two_tasks_of_a_template_with_pf_host_port_get_two_free_ports(tmp_path: Path) -> None:
    ports = []
    for i in range(2):
        with make_env(tmp_path / str(i)) as e:
            (e.slot / "vmctl_job.toml").unlink()
            lay_out(e, "lhcathome_cms.xml")
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))  # another program's port: never picked
            try:
                adapter = e.adapter(profile=TCG)
                assert adapter.start() is None
                (pf,) = e.vm().spec.network.port_forwards  # type: ignore[union-attr]
                assert pf.host_port != busy.getsockname()[1]
                ports.append(pf.host_port)
                recorded = json.loads((e.slot / STATE_FILE).read_text())["extra"]["host_ports"]
                assert recorded == {"80": pf.host_port}, "kept for the task"
            finally:
                busy.close()
    assert 7859 not in ports


def test_a_vm_made_again_for_the_task_gets_its_port_back(env: Env) -> None:
    lay_out(env, "lhcathome_cms.xml")
    adapter = env.adapter(profile=TCG)
    assert adapter.start() is None
    (pf,) = env.vm().spec.network.port_forwards  # type: ignore[union-attr]
    assert env.send(adapter, "<quit/>") == 0
    env.vm().destroy()  # the VM is gone (say, the host rebooted and its hypervisor lost it)
    assert env.adapter(profile=TCG).start() is None
    (again,) = env.vm().spec.network.port_forwards  # type: ignore[union-attr]
    assert again.host_port == pf.host_port


def short(name: str, seconds: int) -> str:
    return re.sub(
        r"<job_duration>\d+</job_duration>", f"<job_duration>{seconds}</job_duration>", (JOBS / name).read_text()
    )


def test_job_duration_ends_the_task_successfully(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    lay_out(env, "lhcathome_cms.xml", short("lhcathome_cms.xml", 30))
    caplog.set_level("INFO", logger="vmctl")
    adapter = env.adapter(profile=TCG)
    assert adapter.start() is None
    assert env.run(adapter, 25) is None, "runs on before its duration"
    assert env.vm().state.value == "running"
    code = env.run(adapter, 10)
    assert code == 0
    assert (env.slot / FINISH_FILE).read_text() == "0\n"
    assert env.hv.machines() == [], "the VM is powered off and deleted, as vboxwrapper's cleanup()"
    assert "the job's duration (30 s of running time) is reached" in caplog.text


def test_job_duration_counts_running_time_of_earlier_runs_not_suspended_time(env: Env) -> None:
    lay_out(env, "lhcathome_cms.xml", short("lhcathome_cms.xml", 30))
    adapter = env.adapter(profile=TCG)
    assert adapter.start() is None
    assert env.run(adapter, 20) is None
    assert env.send(adapter, "<quit/>") == 0
    env.client.write_init_data(starting_elapsed_time=20.0)  # the client's record of the task's run time
    adapter = env.adapter(profile=TCG)
    assert adapter.start() is None
    assert env.send(adapter, "<suspend/>") is None
    assert env.run(adapter, 30) is None, "suspended time is no running time"
    assert env.send(adapter, "<resume/>") is None
    code = env.run(adapter, 15)
    assert code == 0 and (env.slot / FINISH_FILE).read_text() == "0\n"


# -- hardware acceleration -------------------------------------------------------------------------


def test_a_job_needing_acceleration_without_kvm_says_err_cpu_vm_extensions_disabled(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lay_out(env, "boinc_samples_worker.xml")
    monkeypatch.setattr(_hostcheck, "KVM_DEVICE", str(tmp_path / "no-kvm"))  # a host without KVM
    caplog.set_level("INFO", logger="vmctl")
    adapter = env.adapter()  # accel "auto", the default
    assert adapter.start() == _hostcheck.ERR_EXEC
    assert "ERR_CPU_VM_EXTENSIONS_DISABLED" in caplog.text
    assert (env.slot / FINISH_FILE).read_text() == "-148\n"
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists()
    assert env.hv.machines() == []


def test_the_clients_vm_extensions_disabled_is_honoured(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    lay_out(env, "boinc_samples_worker.xml")
    env.client.write_init_data(vm_extensions_disabled=True)
    caplog.set_level("INFO", logger="vmctl")
    assert env.adapter().start() == _hostcheck.ERR_EXEC
    assert "vm_extensions_disabled" in caplog.text and "ERR_CPU_VM_EXTENSIONS_DISABLED" in caplog.text


def test_a_host_profile_choosing_tcg_runs_the_job(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    lay_out(env, "boinc_samples_worker.xml")
    env.client.write_init_data(vm_extensions_disabled=True)
    caplog.set_level("INFO", logger="vmctl")
    assert env.adapter(profile=TCG).start() is None
    assert "runs it with accel=tcg" in caplog.text


def test_a_job_not_needing_acceleration_falls_back_to_tcg_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="vmctl")
    monkeypatch.setattr(_hostcheck, "KVM_DEVICE", str(tmp_path / "no-kvm"))
    assert _hostcheck.choose_acceleration("qemu", {}, needed=False, extensions_disabled=False) == "tcg"
    assert "runs under TCG, 10-50 times slower" in caplog.text
    monkeypatch.undo()
    assert _hostcheck.choose_acceleration("qemu", {}, needed=False, extensions_disabled=True) == "tcg"
    assert _hostcheck.choose_acceleration("virtualbox", {}, needed=True, extensions_disabled=True) is None


def test_vmctl_job_toml_can_require_acceleration() -> None:
    from vmctl.boinc.job import parse_toml

    assert parse_toml('image = "a"\nrequire_acceleration = true\n').needs_acceleration
    assert not parse_toml('image = "a"\n').needs_acceleration


def test_a_backend_without_shared_folders_names_the_jobs_keys(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Partial keys: on a backend that cannot keep them (vSphere has no shared folders) the task
    fails at its start, naming the job file's keys and the backend."""
    from dataclasses import replace

    from vmctl_memory import MemoryHypervisor

    original = MemoryHypervisor.capabilities.fget
    assert original is not None
    monkeypatch.setattr(
        MemoryHypervisor, "capabilities", property(lambda self: replace(original(self), shared_dirs=False))
    )
    lay_out(env, "lhcathome_theory.xml")
    caplog.set_level("INFO", logger="vmctl")
    assert env.adapter(profile=TCG).start() == EXIT_INIT_FAILURE
    assert not (env.slot / TEMPORARY_EXIT_FILE).exists()
    assert (
        "the qemu backend has no shared folders, which the job file's copy_to_shared, completion_trigger_file, "
        "enable_shared_directory, heartbeat_filename need" in caplog.text
    )
    assert env.hv.machines() == []


def test_vbox_memory_is_at_least_vboxwrappers_minimum() -> None:
    from vmctl.boinc.job import parse_vbox_xml

    assert parse_vbox_xml("<vbox_job/>").memory_mib == 512
    job = parse_vbox_xml("<vbox_job><memory_size_mb>256</memory_size_mb></vbox_job>")
    assert job.memory_mib == 512
    assert job.notes == ("memory_size_mb: 256 MB is too small; 512 MB, as vboxwrapper sets it",)
    assert parse_vbox_xml("<vbox_job><memory_size_mb>630</memory_size_mb></vbox_job>").memory_mib == 630
