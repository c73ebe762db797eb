"""Trickle-ups and intermediate uploads (issue 14), on the in-memory backend with the client double:
the files and messages BOINC's app library makes for ``boinc_send_trickle_up`` and
``boinc_upload_file``, from vboxwrapper's sources (trigger files in the shared directory,
``--trickle``). The real client's side is tests/test_boinc_e2e_io.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmctl.boinc._trickles import TRICKLE_FILE, TRICKLE_MAX
from vmctl.boinc.job import parse_vbox_xml
from vmctl.boinc.shm import Channel
from vmctl.boinc.slot import STATE_FILE
from vmctl.boinc.state import TaskState

from .test_boinc_adapter import Env, make_env, started


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        yield e


def take_announcement(env: Env) -> str | None:
    return env.client.shm.receive(Channel.TRICKLE_UP)


def client_moves_trickle(env: Env) -> str:
    """What the client does on <have_new_trickle_up/>: move the slot's file to the project."""
    target = env.project / f"trickle_up_wu_0_0_{len(list(env.project.glob('trickle_up_*')))}.xml"
    os.rename(env.slot / TRICKLE_FILE, target)
    return target.read_text()


def test_a_trickle_trigger_becomes_trickle_up_xml_and_is_announced(env: Env) -> None:
    env.write_job('trickle_trigger_files = ["trickle", "status"]')
    adapter = started(env)
    (env.shared() / "trickle").write_text("<progress>12</progress>\n")
    (env.shared() / "status").write_text("<note>second</note>\n")
    env.run(adapter, 1.1)
    assert take_announcement(env) == "<have_new_trickle_up/>\n"
    first = client_moves_trickle(env)
    assert first == "<variety>trickle</variety>\n<progress>12</progress>\n"
    assert not (env.shared() / "trickle").exists(), "the trigger is consumed"
    assert (env.shared() / "status").exists(), "the second waits for the first to be taken"
    env.run(adapter, 1.1)
    assert take_announcement(env) is None, "nor within the second the client took the first"
    env.run(adapter, 2.1)
    assert take_announcement(env) == "<have_new_trickle_up/>\n"
    assert client_moves_trickle(env) == "<variety>status</variety>\n<note>second</note>\n"
    assert not (env.shared() / "status").exists()
    env.run(adapter, 2.1)
    assert take_announcement(env) is None, "nothing more to say"


def test_a_trickle_is_never_written_over_one_the_client_has_not_taken(env: Env) -> None:
    env.write_job('trickle_trigger_files = ["trickle"]')
    adapter = started(env)
    (env.shared() / "trickle").write_text("one")
    env.run(adapter, 1.1)
    (env.shared() / "trickle").write_text("two")
    env.run(adapter, 3.1)  # the client does not take the message
    assert (env.slot / TRICKLE_FILE).read_text() == "<variety>trickle</variety>\none"
    assert (env.shared() / "trickle").read_text() == "two"
    assert take_announcement(env) == "<have_new_trickle_up/>\n"
    client_moves_trickle(env)
    env.run(adapter, 3.1)
    assert (env.slot / TRICKLE_FILE).read_text() == "<variety>trickle</variety>\ntwo"


def test_hostile_trickle_triggers_are_refused_and_deleted(env: Env, tmp_path: Path) -> None:
    env.write_job('trickle_trigger_files = ["link", "huge", "ok"]')
    adapter = started(env)
    secret = tmp_path / "host_secret"
    secret.write_text("host file\n")
    (env.shared() / "link").symlink_to(secret)
    (env.shared() / "huge").write_bytes(b"x" * (TRICKLE_MAX + 1))
    env.run(adapter, 3.1)
    assert not os.path.lexists(env.shared() / "link") and not (env.shared() / "huge").exists()
    assert secret.read_text() == "host file\n", "the link's target is never touched"
    assert not (env.slot / TRICKLE_FILE).exists(), "nothing was sent"
    (env.shared() / "ok").write_text("fine")
    env.run(adapter, 1.1)
    assert (env.slot / TRICKLE_FILE).read_text() == "<variety>ok</variety>\nfine"


def test_trickle_option_sends_the_elapsed_time_periodically(env: Env) -> None:
    adapter = started(env, trickle_period=5.0)
    sent: list[str] = []
    for _ in range(13):
        env.run(adapter, 1.0)
        if take_announcement(env) is not None:
            sent.append(client_moves_trickle(env))
    assert len(sent) == 2, sent
    assert all(t.startswith("<variety>cpu_time</variety>\n<cpu_time>") for t in sent)
    times = [float(t.split("<cpu_time>")[1].split("<")[0]) for t in sent]
    assert 5.0 <= times[0] < 7.0 and 10.0 <= times[1] < 12.0, times
    record = TaskState.load(env.slot / STATE_FILE)
    assert record is not None and record.extra["last_trickle_elapsed"] == pytest.approx(times[1]), (
        "kept across restarts"
    )


def test_the_guests_trickles_go_first_and_only_the_latest_elapsed_time_waits(env: Env) -> None:
    env.write_job('trickle_trigger_files = ["trickle"]')
    adapter = started(env, trickle_period=1.0)
    env.run(adapter, 1.1)
    assert take_announcement(env) is not None
    assert client_moves_trickle(env).startswith("<variety>cpu_time</variety>")
    (env.shared() / "trickle").write_text("guest data")
    env.run(adapter, 6.1)  # five more elapsed-time trickles are due meanwhile
    take_announcement(env)
    assert client_moves_trickle(env) == "<variety>trickle</variety>\nguest data", "the guest's first"
    env.run(adapter, 3.1)
    take_announcement(env)
    latest = client_moves_trickle(env)
    env.run(adapter, 3.1)
    take_announcement(env)
    after = client_moves_trickle(env)
    value = float(latest.split("<cpu_time>")[1].split("<")[0])
    assert value >= 6.0, "the newest elapsed time, not the oldest waiting one"
    assert float(after.split("<cpu_time>")[1].split("<")[0]) > value


def test_intermediate_upload_copies_the_output_requests_it_and_reads_the_status(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vmctl.boinc")
    env.write_job('intermediate_upload_files = ["part1"]')
    output = env.project / "wu_0_0_r0"  # the result's output file, open name part1
    (env.slot / "part1").write_text("<soft_link>../../projects/p/wu_0_0_r0</soft_link>\n")
    adapter = started(env)
    env.run(adapter, 2.1)
    assert take_announcement(env) is None and not output.exists(), "nothing before the guest writes it"
    (env.shared() / "part1").write_text("partial result\n")
    env.run(adapter, 1.1)
    assert output.read_text() == "partial result\n", "copied to the result's output file"
    assert (env.slot / "boinc_ufr_part1").read_bytes() == b""
    assert take_announcement(env) == "<have_new_upload_file/>\n"
    # The client: checks the file, deletes the request; later the upload ends and it says so.
    (env.slot / "boinc_ufr_part1").unlink()
    (env.slot / "boinc_ufs_part1").write_text("<status>0</status>\n")
    env.client.shm.send(Channel.TRICKLE_DOWN, "<upload_file_status/>\n")
    env.run(adapter, 1.1)
    assert env.client.shm.receive(Channel.TRICKLE_DOWN) is None, "the adapter took the message"
    assert "intermediate file uploaded: part1" in caplog.text
    (env.shared() / "part1").write_text("changed later\n")
    env.run(adapter, 2.1)
    assert take_announcement(env) is None and output.read_text() == "partial result\n", "uploaded once"


def test_an_intermediate_upload_that_is_a_link_is_refused(env: Env, tmp_path: Path) -> None:
    env.write_job('intermediate_upload_files = ["part1"]')
    output = env.project / "wu_0_0_r0"
    (env.slot / "part1").write_text("<soft_link>../../projects/p/wu_0_0_r0</soft_link>\n")
    secret = tmp_path / "host_secret"
    secret.write_text("host file\n")
    adapter = started(env)
    (env.shared() / "part1").symlink_to(secret)
    env.run(adapter, 2.1)
    assert not output.exists() and not (env.slot / "boinc_ufr_part1").exists()
    assert take_announcement(env) is None


def test_vbox_job_trickle_upload_and_graphics_keys() -> None:
    job = parse_vbox_xml(
        "<vbox_job><enable_shared_directory/><trickle_trigger_file>trickle_a</trickle_trigger_file>"
        "<trickle_trigger_file>trickle_b</trickle_trigger_file>"
        "<intermediate_upload_file>out_1</intermediate_upload_file><pf_guest_port>80</pf_guest_port>"
        "</vbox_job>"
    )
    assert job.trickle_trigger_files == ("trickle_a", "trickle_b")
    assert job.intermediate_upload_files == ("out_1",)
    assert job.web_graphics_guest_port == 80
    assert not job.refused


# -- graphics --------------------------------------------------------------------------------------


def test_the_web_graphics_url_is_the_forwarded_port_and_sent_once(env: Env) -> None:
    env.write_job("network = true\nweb_graphics_guest_port = 80\n[[port_forward]]\nguest_port = 80\n")
    adapter = started(env)
    env.run(adapter, 1.1)
    host_port = adapter.state.extra["host_ports"]["80"]
    assert env.vm().spec.network is not None
    assert [pf.host_port for pf in env.vm().spec.network.port_forwards] == [host_port]
    assert (
        env.client.shm.receive(Channel.GRAPHICS_REPLY)
        == f"<web_graphics_url>http://localhost:{host_port}</web_graphics_url>"
    )
    env.run(adapter, 2.1)
    assert env.client.shm.receive(Channel.GRAPHICS_REPLY) is None, "said once"


def test_no_web_graphics_url_when_the_app_has_its_own_graphics(env: Env) -> None:
    env.write_job("network = true\nweb_graphics_guest_port = 80\n[[port_forward]]\nguest_port = 80\n")
    (env.slot / "graphics_app").write_text("<soft_link>../../projects/p/gfx</soft_link>\n")
    adapter = started(env)
    env.run(adapter, 2.1)
    assert env.client.shm.receive(Channel.GRAPHICS_REPLY) is None


def test_a_backend_without_remote_desktop_runs_the_task_without(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.write_job("remote_desktop = true")
    adapter = started(env)
    assert env.run(adapter, 2.1) is None
    assert env.vm().spec.remote_desktop is False
    assert "the memory backend has no" in caplog.text and "remote desktop" in caplog.text
    assert env.client.shm.receive(Channel.GRAPHICS_REPLY) is None


def test_web_graphics_needs_its_port_forward() -> None:
    from vmctl.boinc.job import JobError, parse_toml

    with pytest.raises(JobError, match="needs a port forward"):
        parse_toml('image = "d"\nweb_graphics_guest_port = 80\n')


# -- checkpoints without snapshots (vboxwrapper's disable_automatic_checkpoints) --------------------


VBOX_NO_SNAPSHOTS = (
    "<vbox_job><enable_shared_directory/><completion_trigger_file>done</completion_trigger_file>"
    "<disable_automatic_checkpoints>1</disable_automatic_checkpoints></vbox_job>"
)


def test_disable_automatic_checkpoints_reports_checkpoints_without_snapshots(env: Env) -> None:
    env.write_job(text=VBOX_NO_SNAPSHOTS, name="vbox_job.xml")
    (env.slot / "vmctl_job.toml").unlink()
    (env.slot / "vm_image.vdi").write_text("<soft_link>../../projects/p/v1_base.img</soft_link>\n")
    adapter = started(env)  # the client's checkpoint period is 1 s here
    env.run(adapter, 3.5)
    first = env.next_status(adapter)["checkpoint_cpu_time"]
    assert first > 0, "the client hears of a checkpoint"
    env.run(adapter, 2.5)
    assert env.next_status(adapter)["checkpoint_cpu_time"] > first, "at each checkpoint period"
    assert env.vm().snapshots() == [], "and no snapshot is taken"
    assert adapter.state.checkpoint is None, "nothing to revert to"


def test_checkpoints_off_in_a_toml_job_report_none(env: Env) -> None:
    env.write_job("checkpoints = false")
    adapter = started(env)
    env.run(adapter, 4)
    assert env.next_status(adapter)["checkpoint_cpu_time"] == 0
    assert env.vm().snapshots() == []
