"""The BOINC protocol layer: shared-memory channels, init_data.xml, slot files, job files.

The client double (vmctl.boinc.testing.FakeClient) writes what the real client writes; these
tests pin the bytes down so that the double cannot drift from the client's format.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmctl.boinc.initdata import InitDataError, parse_init_data, read_init_data
from vmctl.boinc.job import JobError, PortForwardSpec, find_job_file, load_job, parse_toml, parse_vbox_xml
from vmctl.boinc.shm import (
    CHANNEL_SIZE,
    MMAP_FILE,
    SEGMENT_SIZE,
    Channel,
    SharedMemoryError,
    create_mmap_file,
    open_shared_memory,
)
from vmctl.boinc.slot import FINISH_FILE, TEMPORARY_EXIT_FILE, Slot, SlotError
from vmctl.boinc.testing import FakeClient, parse_status

# -- shared memory -------------------------------------------------------------------------------


def raw(slot: Path, channel: Channel, size: int = 32) -> bytes:
    data = (slot / MMAP_FILE).read_bytes()
    assert len(data) == SEGMENT_SIZE
    return data[channel * CHANNEL_SIZE : channel * CHANNEL_SIZE + size]


def test_client_double_writes_the_clients_bytes(tmp_path: Path) -> None:
    client = FakeClient(tmp_path)
    try:
        client.control("<suspend/>")
        client.heartbeat(network_suspended=True, wss=1.445069e7, max_wss=2.274886e10)
        assert raw(tmp_path, Channel.PROCESS_CONTROL_REQUEST, 12) == b"\x01<suspend/>\x00"
        beat = b"\x01<heartbeat/><wss>1.445069e+07</wss><max_wss>2.274886e+10</max_wss><network_suspended/>\x00"
        assert raw(tmp_path, Channel.HEARTBEAT, len(beat)) == beat
    finally:
        client.close()


def test_app_side_reads_clears_and_replies(tmp_path: Path) -> None:
    client = FakeClient(tmp_path)
    app = open_shared_memory(tmp_path, -1)
    try:
        client.control("<suspend/>")
        client.control("<quit/>")  # queued: one message at a time
        assert app.receive(Channel.PROCESS_CONTROL_REQUEST) == "<suspend/>"
        assert raw(tmp_path, Channel.PROCESS_CONTROL_REQUEST, 1) == b"\x00"
        assert app.receive(Channel.PROCESS_CONTROL_REQUEST) is None
        client.poll()
        assert app.receive(Channel.PROCESS_CONTROL_REQUEST) == "<quit/>"
        assert app.send(Channel.APP_STATUS, "<current_cpu_time>1.000000e+00</current_cpu_time>")
        assert not app.send(Channel.APP_STATUS, "second"), "never over an unread message"
        assert raw(tmp_path, Channel.APP_STATUS, 10) == b"\x01<current_"
        assert client.status() == {"current_cpu_time": 1.0}
    finally:
        app.close()
        client.close()


def test_client_queue_cancels_opposite_suspend_resume(tmp_path: Path) -> None:
    client = FakeClient(tmp_path)
    try:
        client.control("<abort/>")
        client.control("<suspend/>")
        client.control("<resume/>")  # cancels the queued suspend, as the client does
        assert client.queue == []
        client.heartbeat()
        assert not client.heartbeat(), "an unread heartbeat is not overwritten"
    finally:
        client.close()


def test_messages_are_cut_at_1022_bytes(tmp_path: Path) -> None:
    create_mmap_file(tmp_path / MMAP_FILE)
    shm = open_shared_memory(tmp_path, -1)
    try:
        shm.send(Channel.TRICKLE_UP, "x" * 5000)
        assert raw(tmp_path, Channel.TRICKLE_UP, CHANNEL_SIZE)[-1:] == b"\x00"
        assert shm.receive(Channel.TRICKLE_UP) == "x" * 1022
        assert raw(tmp_path, Channel.TRICKLE_DOWN, 1) == b"\x00", "the next channel is untouched"
    finally:
        shm.close()


def test_a_wrong_or_missing_mmap_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SharedMemoryError, match="cannot open"):
        open_shared_memory(tmp_path, -1)
    (tmp_path / MMAP_FILE).write_bytes(b"\0" * 100)
    with pytest.raises(SharedMemoryError, match="8192"):
        open_shared_memory(tmp_path, -1)


def test_system_v_shared_memory_keyed_by_ftok(tmp_path: Path) -> None:
    pytest.importorskip("sysv_ipc", reason="System V shared memory needs the sysv_ipc package")
    client = FakeClient(tmp_path, use_sysv=True)
    try:
        init = read_init_data(tmp_path)
        assert init.shm_key == client.key and init.shm_key not in (None, -1)
        assert not (tmp_path / MMAP_FILE).exists()
        app = open_shared_memory(tmp_path, init.shm_key)
        client.control("<suspend/>")
        assert app.receive(Channel.PROCESS_CONTROL_REQUEST) == "<suspend/>"
        app.send(Channel.APP_STATUS, "<fraction_done>5.000000e-01</fraction_done>")
        assert client.status() == {"fraction_done": 0.5}
        app.close()
    finally:
        client.close()


# -- init_data.xml -------------------------------------------------------------------------------------

REAL_INIT_DATA = """<app_init_data>
<major_version>7</major_version>
<minor_version>20</minor_version>
<release>5</release>
<app_version>100</app_version>
<userid>0</userid>
<teamid>0</teamid>
<hostid>0</hostid>
<app_name>vmctl_probe</app_name>
<project_preferences>
<unclosed>
</project_preferences>
<project_dir>/var/lib/boinc/projects/127.0.0.1_1_probe</project_dir>
<boinc_dir>/var/lib/boinc</boinc_dir>
<authenticator>0123456789abcdef</authenticator>
<wu_name>wu_0</wu_name>
<result_name>wu_0_0</result_name>
<shm_key>-1</shm_key>
<slot>0</slot>
<client_pid>1905</client_pid>
<wu_cpu_time>6.480000</wu_cpu_time>
<starting_elapsed_time>18.078484</starting_elapsed_time>
<using_sandbox>0</using_sandbox>
<checkpoint_period>5.000000</checkpoint_period>
<ncpus>1.000000</ncpus>
<rsc_memory_bound>2000000000.000000</rsc_memory_bound>
<host_info>
    <p_ncpus>2</p_ncpus>
    <m_nbytes>25276510208.000000</m_nbytes>
</host_info>
<proxy_info>
    <use_http_proxy/>
    <http_server_name>proxy.example</http_server_name>
    <http_server_port>3128</http_server_port>
</proxy_info>
<global_preferences>
   <leave_apps_in_memory>1</leave_apps_in_memory>
   <cpu_usage_limit>60.000000</cpu_usage_limit>
</global_preferences>
</app_init_data>
"""


def test_init_data_as_the_client_writes_it() -> None:
    data = parse_init_data(REAL_INIT_DATA)
    assert (data.result_name, data.wu_name, data.slot, data.client_pid) == ("wu_0_0", "wu_0", 0, 1905)
    assert data.shm_key == -1 and data.wu_cpu_time == 6.48 and data.starting_elapsed_time == 18.078484
    assert data.checkpoint_period == 5.0 and data.ncpus == 1.0 and data.host_ncpus == 2
    assert data.project_dir == "/var/lib/boinc/projects/127.0.0.1_1_probe"
    assert data.leave_apps_in_memory is True and data.cpu_usage_limit == 60.0
    assert data.rsc_memory_bound == 2e9
    assert data.http_proxy == "proxy.example:3128"


def test_init_data_errors(tmp_path: Path) -> None:
    with pytest.raises(InitDataError, match="started by a BOINC client"):
        read_init_data(tmp_path)
    (tmp_path / "init_data.xml").write_text("")
    with pytest.raises(InitDataError, match="empty"):
        read_init_data(tmp_path)
    with pytest.raises(InitDataError, match="not a number"):
        parse_init_data("<app_init_data><wu_cpu_time>lots</wu_cpu_time></app_init_data>")


def test_init_data_of_the_client_double_round_trips(tmp_path: Path) -> None:
    client = FakeClient(tmp_path, result_name="r_1", wu_cpu_time=12.5, client_pid=99)
    try:
        data = read_init_data(tmp_path)
        assert (data.result_name, data.wu_cpu_time, data.client_pid, data.shm_key) == ("r_1", 12.5, 99, -1)
    finally:
        client.close()


# -- slot files ----------------------------------------------------------------------------------------


def test_resolve_soft_links_symlinks_and_plain_files(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "p"
    project.mkdir(parents=True)
    slot_dir = tmp_path / "slots" / "0"
    slot_dir.mkdir(parents=True)
    slot = Slot(slot_dir)
    (slot_dir / "image").write_text("<soft_link>../../projects/p/v1_image.qcow2</soft_link>\n")
    (slot_dir / "kernel").symlink_to("../../projects/p/v1_vmlinuz")
    (slot_dir / "plain.txt").write_text("data")
    assert slot.resolve("image") == project / "v1_image.qcow2"
    assert slot.resolve("kernel") == project / "v1_vmlinuz", "a dangling link still resolves"
    assert slot.resolve("plain.txt") == slot_dir / "plain.txt"
    assert slot.resolve("absent") == slot_dir / "absent"
    for bad in ("../x", "/etc/passwd", ""):
        with pytest.raises(SlotError):
            slot.resolve(bad)


def test_finish_and_temporary_exit_files(tmp_path: Path) -> None:
    slot = Slot(tmp_path)
    slot.write_finish(0)
    assert (tmp_path / FINISH_FILE).read_text() == "0\n"
    slot.write_finish(3, "bad\ninput", notice=True)
    assert (tmp_path / FINISH_FILE).read_text() == "3\nbad input\nnotice\n"
    slot.write_temporary_exit(1e9, "  the hypervisor\nis busy ")
    assert (tmp_path / TEMPORARY_EXIT_FILE).read_text() == "86400\nthe hypervisor is busy\n"
    slot.write_temporary_exit(-5, "")
    assert (tmp_path / TEMPORARY_EXIT_FILE).read_text() == "0\ntemporary exit\n", "never without a reason line"
    slot.remove_end_files()
    assert not os.listdir(tmp_path)


# -- job files ------------------------------------------------------------------------------------------

FULL_TOML = """
backend = "qemu"
image = "vm.qcow2"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 vmctl.share=shared"
memory_mib = 512
cpus = 2
network = true
shared_dir = true
copy_to_shared = ["input.dat"]
job_duration = 3600
fraction_done_file = "progress"
completion_trigger_file = "done"
temporary_exit_trigger_file = "later"
heartbeat_file = "alive"
heartbeat_interval = 120
min_checkpoint_interval = 300
checkpoints = true
poweroff_completes = false
max_retries = 4

[backend_options]
accel = "tcg"

[[port_forward]]
guest_port = 80

[[output]]
from = "result.txt"
to = "result"

[[output]]
from = "log.txt"
to = "log"
optional = true
"""


def test_toml_job_every_key() -> None:
    job = parse_toml(FULL_TOML)
    assert (job.backend, job.image, job.kernel, job.initrd) == ("qemu", "vm.qcow2", "vmlinuz", "initrd.img")
    assert (job.memory_mib, job.cpus, job.network, job.shared_dir) == (512, 2, True, True)
    assert job.port_forwards == (PortForwardSpec(guest_port=80, host_port=0),)
    assert job.backend_options == {"accel": "tcg"}
    assert [(o.source, o.target, o.optional) for o in job.outputs] == [
        ("result.txt", "result", False),
        ("log.txt", "log", True),
    ]
    assert (job.job_duration, job.min_checkpoint_interval, job.heartbeat_interval, job.max_retries) == (
        3600.0,
        300.0,
        120.0,
        4,
    )
    assert not job.poweroff_completes and job.notes == ()
    assert job.with_overrides(cpus=4, memory_mib=1024).cpus == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('image = "a"\ncolour = "blue"', "unknown key(s) 'colour'"),
        ('image = "a"\nmemory_mib = "lots"', "'memory_mib' must be a positive integer"),
        ('image = "a"\nnetwork = "yes"', "'network' must be true or false"),
        ("memory_mib = 256", "needs a disk 'image' or a 'kernel'"),
        ('image = "a"\ncompletion_trigger_file = "done"', "need a shared directory"),
        ('image = "../../etc/passwd"', "relative name without '..'"),
        ('image = "a"\nshared_dir = true\n[[output]]\nfrom = "x"', "[[output]] takes from, to"),
        ("image = ", "not valid TOML"),
    ],
)
def test_toml_job_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(JobError) as info:
        parse_toml(text)
    assert message in str(info.value)


VBOX_JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>2048</memory_size_mb>
  <job_duration>86400</job_duration>
  <minimum_checkpoint_interval>900</minimum_checkpoint_interval>
  <fraction_done_filename>progress</fraction_done_filename>
  <completion_trigger_file>finished</completion_trigger_file>
  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>
  <heartbeat_filename>heartbeat</heartbeat_filename>
  <minimum_heartbeat_interval>1200</minimum_heartbeat_interval>
  <multiattach_vdi_file>cernvm.vdi</multiattach_vdi_file>
  <enable_network/>
  <enable_shared_directory/>
  <copy_to_shared>input.tgz</copy_to_shared>
  <copy_to_shared>config.json</copy_to_shared>
  <enable_vm_savestate_usage/>
  <disable_automatic_checkpoints>1</disable_automatic_checkpoints>
  <port_forward><host_port>0</host_port><guest_port>8000</guest_port><nports>2</nports><is_remote>1</is_remote></port_forward>
  <pf_guest_port>80</pf_guest_port>
  <enable_floppyio/>
  <enable_isocontextualization/>
  <vm_disk_controller_type>sata</vm_disk_controller_type>
  <trickle_trigger_file>trickle</trickle_trigger_file>
  <some_future_key>1</some_future_key>
</vbox_job>
"""


def test_vbox_job_keys_honoured_and_reported() -> None:
    job = parse_vbox_xml(VBOX_JOB)
    # with the ISO, vboxwrapper attaches no disk image (vbox_vboxmanage.cpp), multiattach or not
    assert (job.image, job.cdrom, job.floppy) == (None, "vm_isocontext.iso", True)
    assert (job.memory_mib, job.job_duration, job.min_checkpoint_interval) == (2048, 86400.0, 900.0)
    assert (job.fraction_done_file, job.completion_trigger_file, job.temporary_exit_trigger_file) == (
        "progress",
        "finished",
        "later",
    )
    assert (job.heartbeat_file, job.heartbeat_interval) == ("heartbeat", 1200.0)
    assert job.network and job.shared_dir and not job.checkpoints
    assert job.copy_to_shared == ("input.tgz", "config.json")
    assert job.port_forwards == (
        PortForwardSpec(guest_port=8000),
        PortForwardSpec(guest_port=8001),
        PortForwardSpec(guest_port=80),
    )
    reported = {note.split(":")[0] for note in job.notes}
    assert reported == {
        "port_forward/is_remote",
        "vm_disk_controller_type",
        "some_future_key",
        "multiattach_vdi_file",
    }
    assert any("unknown vbox_job.xml key" in n for n in job.notes)
    # what the guest would wait for in vain fails the task at its start, never a note
    assert job.refused == (), "the floppy and the ISO are given (QEMU), trickles sent"
    assert job.trickle_trigger_files == ("trickle",), "sent as trickle-ups (tests/test_boinc_io.py)"
    assert job.needs_acceleration, "a 64-bit os_name requires hardware virtualization, as in vboxwrapper"


def test_vbox_job_defaults_to_vboxwrappers_image_name() -> None:
    job = parse_vbox_xml("<vbox_job/>")
    assert job.image == "vm_image.vdi" and job.backend == "qemu" and job.notes == ()


def test_vbox_job_errors() -> None:
    with pytest.raises(JobError, match="not well-formed"):
        parse_vbox_xml("<vbox_job>")
    with pytest.raises(JobError, match="must be a number"):
        parse_vbox_xml("<vbox_job><memory_size_mb>big</memory_size_mb></vbox_job>")
    with pytest.raises(JobError, match="need a shared directory"):
        parse_vbox_xml("<vbox_job><completion_trigger_file>x</completion_trigger_file></vbox_job>")


def test_job_file_found_in_the_slot_toml_first(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no job file"):
        find_job_file(tmp_path)
    (tmp_path / "vbox_job.xml").write_text("<vbox_job/>")
    assert load_job(find_job_file(tmp_path)).image == "vm_image.vdi"
    (tmp_path / "v1_job").write_text('image = "disk.qcow2"\n')
    (tmp_path / "vmctl_job.toml").write_text(f"<soft_link>{tmp_path / 'v1_job'}</soft_link>")
    assert load_job(find_job_file(tmp_path)).image == "disk.qcow2"


def test_status_parser() -> None:
    text = "<current_cpu_time>1.5e+01</current_cpu_time>\n<other_pid>42</other_pid>\n"
    assert parse_status(text) == {"current_cpu_time": 15.0, "other_pid": 42.0}


# -- the maintainer's guide stays true ----------------------------------------------------------------

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "boinc.md"


def test_guide_lists_every_vbox_key_with_its_treatment() -> None:
    from vmctl.boinc.job import VBOX_KEYS

    text = GUIDE.read_text()
    table = text.split("<!-- vbox keys:", 1)[1].split("<!-- end vbox keys -->", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert set(rows) == set(VBOX_KEYS)
    for key, meaning in VBOX_KEYS.items():
        treatment = meaning.split(":")[0].split()[0]
        assert treatment in ("honoured", "partial", "refused", "ignored"), key
        assert rows[key].split(":")[0].split()[0] == treatment, key


def test_guide_lists_every_job_file_key() -> None:
    from vmctl.boinc.job import _TOML_KEYS

    text = GUIDE.read_text()
    section = text.split("## The job file", 1)[1].split("### vbox_job.xml", 1)[0]
    for key in _TOML_KEYS:
        assert f"`{key}`" in section or f"`[{key}]`" in section or f"`[[{key}]]`" in section, key


@pytest.mark.parametrize("module", ["shm", "initdata", "slot", "job", "state", "testing"])
def test_module_examples(module: str) -> None:
    """The examples in vmctl.boinc's docstrings run (the suite collects doctests under tests/ only)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"vmctl.boinc.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
