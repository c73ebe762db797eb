"""Fault injection on the BOINC adapter: hostile input through the real parsing code, the adapter
SIGKILLed under the real client, and a frozen (SIGSTOPped) client.

Bad input (hypothesis, no VM): shared-memory channel bytes as a client or a stray writer could
leave them, ``init_data.xml`` texts and job files (TOML and vboxwrapper XML). Every case must end
in a typed error (``InitDataError``, ``JobError``, ``SlotError``, ``vmctl.VmctlError``) or a
correct parse; nothing outside the slot may be touched (a sentinel tree around the slot is
compared before and after) and nothing may run through a shell (``subprocess`` and ``os.system``
are replaced by tripwires while the code runs).

Real client (Debian's ``boinc``, QEMU TCG test guest, tests/boinc_peer.py): what the client does
when its app dies of SIGKILL is BOINC's ``ACTIVE_TASK::handle_exited_app``: a task killed by
SIGHUP/INT/QUIT/KILL/TERM/STOP is "in limbo" (``CPU_SCHED_PREEMPTED``, ``PROCESS_UNINITIALIZED``)
and is started again, not errored; then the client kills the app's ``other_pid`` (the VM's QEMU)
with the rest of the app's subsidiary processes. The restarted adapter must continue the task
from the VM's last state (the newest checkpoint, whose memory snapshot means no reboot), with
exactly one QEMU process for the task. A SIGSTOPped client sends no heartbeat: the adapter must
save the VM to disk and exit within 35 s, and the task continue when the client is SIGCONTed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmctl
from vmctl.boinc.adapter import HEARTBEAT_TIMEOUT, SAVE_RETRY_TIME
from vmctl.boinc.initdata import INIT_DATA_FILE, InitDataError, parse_init_data, read_init_data
from vmctl.boinc.job import JobError, load_job, parse_toml, parse_vbox_xml
from vmctl.boinc.shm import (
    CHANNEL_SIZE,
    MAX_MESSAGE,
    MMAP_FILE,
    SEGMENT_SIZE,
    Channel,
    SharedMemoryError,
    create_mmap_file,
    open_shared_memory,
)
from vmctl.boinc.slot import Slot, SlotError
from vmctl.boinc.testing import FakeClient
from vmctl.testguest import TestGuest

from .boinc_peer import BoincPeer, Task, boinc_available
from .test_boinc_e2e import VM, Watch, alive, cleanup, cpu_pair, guest, make_peer  # noqa: F401 - fixtures

TYPED = (InitDataError, JobError, SlotError, SharedMemoryError, vmctl.VmctlError)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- a sandbox: a sentinel tree around the slot, and no shell -------------------------------------


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int, float] | str]:
    """Every path under ``root`` except ``skip``: (mode, size, mtime), or the link target."""
    seen: dict[str, tuple[int, int, float] | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames + filenames:
            p = here / name
            st_ = p.lstat()
            seen[str(p.relative_to(root))] = (
                os.readlink(p) if p.is_symlink() else (st_.st_mode, st_.st_size, st_.st_mtime)
            )
    return seen


class Sandbox:
    """``root/{etc/passwd, project/app.img, slots/0 (the slot), slots/1/init_data.xml}``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slot = root / "slots" / "0"
        self.slot.mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (root / "project").mkdir()
        (root / "project" / "app.img").write_bytes(b"\1" * 4096)
        (root / "slots" / "1").mkdir()
        (root / "slots" / "1" / INIT_DATA_FILE).write_text("<app_init_data/>\n")
        self.before = _tree(root, self.slot)

    def check(self) -> None:
        assert _tree(self.root, self.slot) == self.before, "something outside the slot was touched"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    # depth so that ../../etc/passwd from the slot lands on the sentinel, not the real /etc
    return Sandbox(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(autouse=True)
def no_shell(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any subprocess or os.system call in the code under test fails the test (bad-input tests only)."""
    if "sandbox" not in request.fixturenames:
        return

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a process was started while parsing: {args!r}")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, tripwire)
    monkeypatch.setattr(os, "system", tripwire)
    monkeypatch.setattr(os, "popen", tripwire)


def typed_or_ok(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TYPED as exc:
        return exc


# -- shared memory ----------------------------------------------------------------------------------


@FAST
@given(
    channel=st.sampled_from(list(Channel)),
    raw=st.binary(min_size=0, max_size=CHANNEL_SIZE + 64),
    flag=st.integers(0, 255),
)
def test_channel_bytes_of_any_shape_read_as_one_bounded_message(
    sandbox: Sandbox, channel: Channel, raw: bytes, flag: int
) -> None:
    """Truncated, oversized, NUL-less, non-UTF-8 bytes in a channel: receive returns str or None."""
    create_mmap_file(sandbox.slot / MMAP_FILE)
    client = open_shared_memory(sandbox.slot, -1)
    app = open_shared_memory(sandbox.slot, None)
    try:
        # what a stray writer may leave: the flag, then bytes running into the next channel
        client.segment.write(channel.offset, bytes([flag]) + raw[: SEGMENT_SIZE - channel.offset - 1])
        neighbour = app.segment.read(channel.offset + CHANNEL_SIZE, CHANNEL_SIZE) if channel < 7 else b""
        got = app.receive(channel)
        if flag == 0:
            assert got is None
        else:
            assert isinstance(got, str)
            body = raw[: CHANNEL_SIZE - 1].split(b"\0", 1)[0]
            assert got == body.decode("utf-8", errors="replace"), "the text stops at NUL or the channel's end"
            assert not app.pending(channel), "taking a message clears its flag"
        if channel < 7:
            assert app.segment.read(channel.offset + CHANNEL_SIZE, CHANNEL_SIZE) == neighbour
    finally:
        app.close()
        client.close()
    sandbox.check()


@FAST
@given(text=st.text(max_size=3 * MAX_MESSAGE))
def test_oversized_and_unicode_messages_are_cut_inside_their_channel(sandbox: Sandbox, text: str) -> None:
    create_mmap_file(sandbox.slot / MMAP_FILE)
    with open_shared_memory(sandbox.slot, -1) as a, open_shared_memory(sandbox.slot, -1) as b:
        before = b.segment.read(Channel.APP_STATUS.offset + CHANNEL_SIZE, CHANNEL_SIZE)
        assert a.send(Channel.APP_STATUS, text)
        got = b.receive(Channel.APP_STATUS)
        assert got is not None
        data = text.encode()[:MAX_MESSAGE].split(b"\0", 1)[0]
        assert got == data.decode("utf-8", errors="replace")
        assert b.segment.read(Channel.APP_STATUS.offset + CHANNEL_SIZE, CHANNEL_SIZE) == before
    sandbox.check()


_tag = st.sampled_from(["suspend", "resume", "quit", "abort", "heartbeat", "wss", "network_suspended", "x"])


@st.composite
def xmlish(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 4 if depth < 6 else 2))
        if kind == 0:
            parts.append(draw(st.text(max_size=20)))
        elif kind == 1:
            parts.append(f"<{draw(_tag)}/>")
        elif kind == 2:
            parts.append(draw(st.sampled_from(["<", ">", "</", "&", "&#0;", "]]>", "<!--", "\0", "\udcff"[:0]])))
        else:
            t = draw(_tag)
            parts.append(f"<{t}>{draw(xmlish(depth + 1))}</{t}>")
    return "".join(parts)


@settings(FAST, max_examples=100)
@given(messages=st.lists(xmlish(), min_size=1, max_size=4))
def test_garbage_control_and_heartbeat_messages_never_break_the_adapter(sandbox: Sandbox, messages: list[str]) -> None:
    """Garbage and nested XML through the real channel into the adapter's message handling."""
    from vmctl.boinc.adapter import Adapter
    from vmctl.boinc.job import Job
    from vmctl_memory import MemoryHypervisor

    slot = sandbox.slot / "adapter"
    client = FakeClient(slot, result_name="wu_fuzz_0")
    (slot / "disk.img").write_bytes(b"\0" * 512)
    hv = MemoryHypervisor(namespace=f"fuzz-{uuid.uuid4().hex}")
    job = Job(source="t", backend="memory", image="disk.img")
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    adapter = Adapter(
        Slot(slot),
        read_init_data(slot),
        job,
        open_shared_memory(slot, -1),
        connect=lambda *_: hv,
        clock=lambda: now[0],
        sleep=sleep,
        registry=None,
    )
    try:
        assert adapter.start() is None
        for text in messages:
            client.shm.send_overwrite(Channel.PROCESS_CONTROL_REQUEST, text)
            client.shm.send_overwrite(Channel.HEARTBEAT, text)
            now[0] += 0.1
            code = adapter.step()
            vm_state = hv.machine(adapter.vm_name).state if hv._machine_names() else None
            if code is None:
                assert vm_state in (vmctl.State.RUNNING, vmctl.State.PAUSED)
                continue
            # only a real <quit/> or <abort/> ends the run, each the documented way
            assert "<quit/>" in text or "<abort/>" in text, (text, code)
            assert code in (0, 194)
            assert vm_state is (vmctl.State.SUSPENDED if code == 0 else None)
            break
    finally:
        adapter.shm.close()
        client.close()
        for vm in hv.machines():
            vm.destroy()
        import shutil

        shutil.rmtree(slot)
    sandbox.check()


# -- init_data.xml ---------------------------------------------------------------------------------

_FIELDS = [
    "app_name",
    "result_name",
    "slot",
    "client_pid",
    "shm_key",
    "wu_cpu_time",
    "checkpoint_period",
    "ncpus",
    "starting_elapsed_time",
    "host_info/p_ncpus",
    "host_info/m_nbytes",
    "global_preferences/cpu_usage_limit",
    "global_preferences/leave_apps_in_memory",
    "proxy_info/http_server_port",
]
_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "0x10", "1_000", "\uff11\uff12", "9" * 400, "1e-400"]),
)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def init_texts(draw: st.DrawFn) -> str:
    fields = draw(st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=8))
    body = ""
    for path, value in fields.items():
        text = _escape("".join(c for c in value if c.isprintable()))
        parts = path.split("/")
        inner = f"<{parts[-1]}>{text}</{parts[-1]}>"
        if len(parts) == 2:
            inner = f"<{parts[0]}>{'<use_http_proxy/>' if parts[0] == 'proxy_info' else ''}{inner}</{parts[0]}>"
            if parts[0] == "proxy_info":
                inner = inner.replace("<use_http_proxy/>", "<use_http_proxy/><http_server_name>p</http_server_name>")
        body += inner
    root = draw(st.sampled_from(["app_init_data", "app_init_data", "something_else"]))
    text = f"<{root}>{body}</{root}>"
    damage = draw(st.integers(0, 5))
    if damage == 1:
        text = text[: draw(st.integers(0, len(text)))]  # truncated
    elif damage == 2:
        text = draw(st.text(max_size=200))  # garbage
    elif damage == 3:
        text = text.replace("</app_init_data>", "<project_preferences><a></b></project_preferences></app_init_data>")
    return text


@FAST
@given(text=init_texts())
def test_init_data_of_any_shape_is_a_typed_error_or_a_sound_parse(sandbox: Sandbox, text: str) -> None:
    (sandbox.slot / INIT_DATA_FILE).write_text(text, encoding="utf-8", errors="surrogateescape")
    result = typed_or_ok(lambda: read_init_data(sandbox.slot))
    if not isinstance(result, Exception):
        assert result == parse_init_data(text)
        assert isinstance(result.slot, int) and isinstance(result.client_pid, int)
        assert isinstance(result.wu_cpu_time, float) and isinstance(result.checkpoint_period, float)
        assert result.shm_key is None or isinstance(result.shm_key, int)
    sandbox.check()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<app_init_data>",
        "<app_init_data><slot>1e999</slot></app_init_data>",  # int(float('inf'))
        "<app_init_data><client_pid>nan</client_pid></app_init_data>",  # int(float('nan'))
        "<app_init_data><shm_key>-1e400</shm_key></app_init_data>",
        "<app_init_data><global_preferences><cpu_usage_limit>x</cpu_usage_limit></global_preferences></app_init_data>",
        "<app_init_data><!DOCTYPE x [<!ENTITY a 'aaaa'>]><slot>&a;</slot></app_init_data>",
    ],
)
def test_init_data_edge_cases(sandbox: Sandbox, text: str) -> None:
    (sandbox.slot / INIT_DATA_FILE).write_text(text)
    result = typed_or_ok(lambda: read_init_data(sandbox.slot))
    assert isinstance(result, InitDataError), result
    sandbox.check()


# -- job files -------------------------------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(
        [
            "../../etc/passwd",
            "/etc/passwd",
            "..",
            ".",
            "a/../../b",
            "ok.img",
            "sub/ok.img",
            "$(id)",
            "`id`",
            "a;rm -rf /",
        ]
    ),
    st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s),
)
_toml_values = st.one_of(
    _names,
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.lists(_names, max_size=3),
    st.dictionaries(st.sampled_from(["from", "to", "optional", "guest_port", "host_port", "x"]), _names, max_size=3),
)
_TOML_KEYS = [
    "backend",
    "image",
    "kernel",
    "initrd",
    "cmdline",
    "memory_mib",
    "cpus",
    "network",
    "shared_dir",
    "copy_to_shared",
    "job_duration",
    "fraction_done_file",
    "completion_trigger_file",
    "heartbeat_file",
    "heartbeat_interval",
    "max_retries",
    "retry_delay",
    "backend_options",
    "port_forward",
    "output",
    "unknown_key",
]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _check_names(job: Any, slot: Path) -> None:
    """A job that parsed names only files inside the slot / shared dir."""
    s = Slot(slot)
    for name in (job.image, job.kernel, job.initrd, *job.copy_to_shared, *(o.target for o in job.outputs)):
        if name is not None:
            p = s.file(name)  # SlotError if it leaves the slot
            assert os.path.commonpath([os.path.normpath(p), s.path]) == str(s.path), name
    for name in (
        job.fraction_done_file,
        job.completion_trigger_file,
        job.heartbeat_file,
        *(o.source for o in job.outputs),
    ):
        if name is not None:
            assert not Path(name).is_absolute() and ".." not in Path(name).parts


@FAST
@given(
    data=st.dictionaries(st.sampled_from(_TOML_KEYS), _toml_values, max_size=6),
    image=st.one_of(st.none(), _names),
    garbage=st.one_of(st.none(), st.text(max_size=80)),
)
def test_toml_job_files_are_a_typed_error_or_stay_inside_the_slot(
    sandbox: Sandbox, data: dict[str, Any], image: str | None, garbage: str | None
) -> None:
    if image is not None:
        data.setdefault("image", image)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items()]
    text = garbage if garbage is not None else "\n".join(lines) + "\n"
    path = sandbox.slot / "vmctl_job.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = typed_or_ok(lambda: load_job(path))
    if not isinstance(result, Exception):
        assert result == parse_toml(text)
        assert isinstance(result.memory_mib, int) and result.memory_mib >= 1
        _check_names(result, sandbox.slot)
    sandbox.check()


_VBOX_TAGS = [
    "memory_size_mb",
    "job_duration",
    "multiattach_vdi_file",
    "copy_to_shared",
    "fraction_done_filename",
    "completion_trigger_file",
    "enable_shared_directory",
    "enable_network",
    "pf_guest_port",
    "pf_host_port",
    "minimum_checkpoint_interval",
    "os_name",
    "bogus",
]


@st.composite
def vbox_texts(draw: st.DrawFn) -> str:
    body = ""
    for tag in draw(st.lists(st.sampled_from([*_VBOX_TAGS, "port_forward"]), max_size=7)):
        if tag == "port_forward":
            inner = "".join(
                f"<{t}>{_escape(draw(_values))}</{t}>"
                for t in draw(
                    st.lists(st.sampled_from(["host_port", "guest_port", "nports", "is_remote", "x"]), max_size=3)
                )
            )
            body += f"<port_forward>{inner}</port_forward>"
        else:
            value = draw(st.one_of(_values, _names))
            body += f"<{tag}>{_escape(''.join(c for c in value if c.isprintable()))}</{tag}>"
    text = f"<vbox_job>{body}</vbox_job>"
    if draw(st.integers(0, 6)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


@FAST
@given(text=vbox_texts())
def test_vbox_job_files_are_a_typed_error_or_stay_inside_the_slot(sandbox: Sandbox, text: str) -> None:
    path = sandbox.slot / "vbox_job.xml"
    path.write_text(text)
    result = typed_or_ok(lambda: load_job(path))
    if not isinstance(result, Exception):
        assert result == parse_vbox_xml(text)
        _check_names(result, sandbox.slot)
        assert result.memory_mib >= 1
        for pf in result.port_forwards:
            assert 1 <= pf.guest_port <= 65535 and 0 <= pf.host_port <= 65535
    sandbox.check()


@pytest.mark.parametrize(
    "text",
    [
        "<vbox_job><memory_size_mb>1e400</memory_size_mb></vbox_job>",
        "<vbox_job><pf_guest_port>1e30</pf_guest_port></vbox_job>",
        "<vbox_job><port_forward><guest_port>80</guest_port><nports>1e12</nports></port_forward></vbox_job>",
        "<vbox_job><multiattach_vdi_file>../../etc/passwd</multiattach_vdi_file></vbox_job>",
        "<vbox_job><copy_to_shared>/etc/passwd</copy_to_shared><enable_shared_directory/></vbox_job>",
        'image = "../../etc/passwd"\n',
        'image = "a"\n[[output]]\nfrom = "r"\nto = "../../../etc/passwd"\n',
    ],
)
def test_job_file_edge_cases(sandbox: Sandbox, text: str) -> None:
    name = "vbox_job.xml" if text.startswith("<") else "vmctl_job.toml"
    path = sandbox.slot / name
    path.write_text(text)
    started = time.monotonic()
    result = typed_or_ok(lambda: load_job(path))
    assert time.monotonic() - started < 2, "an absurd value must not make the parser work for long"
    assert isinstance(result, JobError), result
    sandbox.check()


# -- the real client ------------------------------------------------------------------------------

needs_client = pytest.mark.skipif(boinc_available() is not None, reason=str(boinc_available()))


def qemu_processes(slot: Path) -> list[psutil.Process]:
    """QEMU processes running a VM of this slot."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = p.info["cmdline"] or []
            if cmd and "qemu-system" in os.path.basename(cmd[0]) and any(str(slot) in a for a in cmd):
                found.append(p)
    return found


def running_adapter(peer: BoincPeer, task: Task, not_this: psutil.Process | None = None) -> psutil.Process:
    """The task's adapter process as the host shows it (a new one if ``not_this`` is given)."""

    def find() -> psutil.Process | None:
        proc = peer.app_process(task)
        return proc if proc is not None and proc != not_this else None

    found: psutil.Process = peer.wait_for(find, 60, "the task's adapter to run")
    return found


def handled_exit(peer: BoincPeer, task: Task) -> str:
    """The client's account of the exit of the task's app that the test just caused."""
    n = peer.allowed_exits[task.result]

    def exit_n() -> str | None:
        exits = peer.app_exits(task)
        return exits[n - 1] if len(exits) >= n and "task_state=" in exits[n - 1] else None

    text: str = peer.wait_for(exit_n, 20, f"the client to handle exit {n} of the app")
    return text


@needs_client
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkilled_adapter_and_frozen_client(
    tmp_path: Path,
    guest: TestGuest,  # noqa: F811
    cleanup: list[BoincPeer | Watch],  # noqa: F811
) -> None:
    task = Task("wu_0", output="result")
    peer = make_peer(tmp_path, guest, task)
    watch = Watch(peer)
    cleanup += [peer, watch]
    peer.allowed_exits[task.result] = 0  # the adapter must not exit unless the test makes it
    peer.start()
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to run")
    watch.remember_processes()
    peer.wait_for(lambda: watch.progress() > 0, 60, "the guest's job to report progress")
    # a checkpoint taken after the guest's job started (an earlier one may predate its boot lines)
    first = cpu_pair(peer.info(task))[1]
    peer.wait_for(lambda: cpu_pair(peer.info(task))[1] > first, 30, "a checkpoint of the running job")

    # SIGKILL the adapter mid-task.
    adapter = running_adapter(peer, task)
    rounds_killed = watch.progress()
    peer.expect_exit(task)
    try:
        adapter.kill()  # psutil sends nothing to a process that is gone or whose PID was reused
    except psutil.NoSuchProcess:
        with contextlib.suppress(AssertionError):  # the client's account of the exit, if it comes
            peer.wait_for(lambda: peer.app_exits(task), 5, "the client to log the exit")
        pytest.fail(f"the adapter exited on its own before the test killed it:\n{peer.why_not_running(task)}")
    peer.wait_for(lambda: not alive(adapter), 10, "the adapter to die")
    killed = handled_exit(peer, task)
    assert "process got signal 9" in killed, f"not ended by the test's SIGKILL:\n{peer.why_not_running(task)}"

    adapter = running_adapter(peer, task, not_this=adapter)  # the client restarted it
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the VM to run again")
    assert "exit" not in peer.info(task).get("state", ""), peer.info(task)
    watch.remember_processes()
    assert len(qemu_processes(watch.slot)) == 1, "no second VM"
    assert sorted(p.name for p in (watch.slot / "vm").iterdir()) == [VM]
    # continued from the VM's last state: the guest was never rebooted and its count goes on
    peer.wait_for(lambda: watch.progress() > rounds_killed, 30, "the guest's count to go on")
    assert watch.console().count("VMCTL-GUEST BOOT") == 1
    assert len(qemu_processes(watch.slot)) == 1, "no second VM"
    stderr = (watch.slot / "stderr.txt").read_text()
    assert "adopting the running VM" in stderr or "continuing from the last checkpoint" in stderr, stderr[-2000:]

    # Freeze the client: no heartbeat; after HEARTBEAT_TIMEOUT the adapter saves the VM and exits.
    # How long the save takes depends on the machine's load (and may include the adapter's
    # retries): it is measured, not asserted; the adapter must not give up before the timeout.
    assert peer.proc is not None
    peer.wait_for(lambda: float(peer.info(task).get("current CPU time", "0")) > 0, 20, "a report")
    adapter = running_adapter(peer, task)
    peer.expect_exit(task)
    os.kill(peer.proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        deadline = frozen + HEARTBEAT_TIMEOUT + SAVE_RETRY_TIME + 60
        while alive(adapter) and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - frozen
        assert not alive(adapter), f"the adapter did not exit while the client was frozen for {took:.0f} s"
        print(f"frozen client: the adapter saved the VM and exited {took:.1f} s after SIGSTOP")
        stderr = (watch.slot / "stderr.txt").read_text()
        assert f"no heartbeat from the BOINC client for {HEARTBEAT_TIMEOUT:.0f} s" in stderr, stderr[-2000:]
        assert took >= HEARTBEAT_TIMEOUT - 2, f"the adapter gave up {took:.1f} s after the last heartbeat"
        assert watch.vm_state() is vmctl.State.SUSPENDED
        assert qemu_processes(watch.slot) == []
        rounds_frozen = watch.progress()
    finally:
        os.kill(peer.proc.pid, signal.SIGCONT)
    postponed = handled_exit(peer, task)
    assert "postponed for 0 seconds: no heartbeat" in postponed, postponed
    peer.wait_for(lambda: watch.vm_state() is vmctl.State.RUNNING, 60, "the task to continue after SIGCONT")
    watch.remember_processes()
    assert len(qemu_processes(watch.slot)) == 1
    peer.wait_for(lambda: watch.progress() > rounds_frozen, 30, "the guest's count to go on")
    assert watch.console().count("VMCTL-GUEST BOOT") == 1, "restored, not rebooted"

    # The task completes and nothing is left.
    adapter = running_adapter(peer, task)
    peer.expect_exit(task)
    (watch.slot / "shared" / "finish_now").write_text("go\n")
    peer.wait_for(lambda: peer.info(task).get("ready to report") == "yes", 60, "the task to finish")
    assert peer.info(task)["exit_status"] == "0"
    assert "exited, status 0," in handled_exit(peer, task)
    rounds = int((peer.project_dir / task.output_file).read_text().strip().split("=")[1])
    assert rounds > rounds_frozen, "no work lost"
    peer.wait_for(lambda: not any(alive(p) for p in watch.procs | {adapter}), 20, "the processes to end")
    assert qemu_processes(watch.slot) == []
