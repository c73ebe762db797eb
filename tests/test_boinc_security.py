"""The VM is a sandbox: a hostile guest or a hostile job file cannot reach the volunteer's host
(issue 13). One section per attack; what the guest writes is planted in the host-side share
directory (that is what a guest's 9p writes become), on the in-memory backend, and the whole
program runs as the client starts it where the attack is against the program (a hang, a memory
blow-up, an exit code).
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
import vmctl.boinc._vmsetup as vmsetup
from tests.test_boinc_adapter import Env, make_env, output_job, started
from vmctl.backend.ports import free_port
from vmctl.boinc._diskuse import CHECK_INTERVAL, EXIT_DISK_LIMIT_EXCEEDED, DiskBound, disk_usage, vm_file_roots
from vmctl.boinc._safefs import UnsafeFile, copy_bounded, read_bounded, read_tail, stat_beneath, write_exclusive
from vmctl.boinc.adapter import EXIT_ABORTED_BY_CLIENT, EXIT_CHILD_FAILED, EXIT_INIT_FAILURE, Adapter
from vmctl.boinc.hostconfig import CONFIG_ENV, HostConfigError, Profile, load_host_config
from vmctl.boinc.initdata import InitDataError, parse_init_data, read_init_data
from vmctl.boinc.job import JobError, find_job_file, load_job, parse_toml, parse_vbox_xml
from vmctl.boinc.shm import open_shared_memory
from vmctl.boinc.slot import FINISH_FILE, Slot, SlotError
from vmctl.boinc.testing import FakeClient
from vmctl.testguest import ensure_test_guest

pytestmark = pytest.mark.timeout(120)

SECRET = "account key 0123456789abcdef\n"  # noqa: S105 (a stand-in)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as e:
        yield e


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A 0600 host file the guest must never read (a BOINC account file)."""
    path = tmp_path / "account_secret.xml"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def memory_profile_config(tmp_path: Path, **options: str) -> Path:
    """A host configuration with a ``memory`` profile (the in-memory backend)."""
    path = tmp_path / "etc" / "boinc.toml"
    path.parent.mkdir(exist_ok=True)
    lines = ['[profiles.memory]\nbackend = "memory"\n[profiles.memory.options]\n']
    lines += [f'{key} = "{value}"\n' for key, value in options.items()]
    path.write_text("".join(lines))
    path.chmod(0o644)
    return path


class Program:
    """``python -m vmctl.boinc`` in the env's slot, as the client starts it, with an address-space
    limit of 2 GiB (a memory blow-up fails fast instead of hurting the machine)."""

    def __init__(self, env: Env, tmp_path: Path) -> None:
        self.env = env
        config = memory_profile_config(tmp_path, namespace=f"sec-{os.getpid()}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmctl.boinc"],
            cwd=env.slot,
            env={**os.environ, CONFIG_ENV: str(config)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)),
        )

    def wait_status(self, timeout: float) -> dict[str, float]:
        """Beat like the client until the program reports a status; fail if it exits or hangs."""
        deadline = time.monotonic() + timeout
        self.env.client.status()
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the adapter exited with {self.proc.returncode}: {self.stderr()}"
            self.env.client.heartbeat()
            self.env.client.poll()
            status = self.env.client.status()
            if status is not None:
                return status
            time.sleep(0.1)
        raise AssertionError(f"no status report within {timeout} s: the adapter hangs")

    def abort(self, timeout: float) -> int:
        self.env.client.control("<abort/>")
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the adapter did not answer <abort/> within {timeout} s")
            self.env.client.heartbeat()
            self.env.client.poll()
            time.sleep(0.1)
        return self.proc.returncode

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def program(env: Env, tmp_path: Path) -> Iterator[Program]:
    p = Program(env, tmp_path)
    try:
        yield p
    finally:
        p.close()


# -- 1. guest files follow no link -------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["openat2", "by-component"])
def use_openat2(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_safe_reads_refuse_links_fifos_devices_and_escapes(tmp_path: Path, secret: Path, use_openat2: bool) -> None:
    share = tmp_path / "share"
    (share / "sub").mkdir(parents=True)
    (share / "plain").write_text("0.5\n")
    (share / "sub" / "deep").write_text("deep\n")
    os.symlink(secret, share / "link")
    os.symlink("/dev/zero", share / "zero")
    os.symlink(tmp_path, share / "dirlink")
    os.mkfifo(share / "fifo")
    (share / "dir").mkdir()
    assert read_bounded(share, "plain", 4096, use_openat2=use_openat2) == b"0.5\n"
    assert read_bounded(share, "sub/deep", 4096, use_openat2=use_openat2) == b"deep\n"
    assert read_tail(share, "plain", 2, use_openat2=use_openat2) == b"5\n"
    assert stat_beneath(share, "plain", use_openat2=use_openat2).st_size == 4
    for name, why in [
        ("link", "symbolic link"),
        ("zero", "symbolic link"),
        ("dirlink/account_secret.xml", "symbolic link"),
        ("fifo", "FIFO"),
        ("dir", "directory"),
        ("../account_secret.xml", "not a plain relative name"),
        (str(secret), "not a plain relative name"),
    ]:
        with pytest.raises(UnsafeFile, match=why):
            read_bounded(share, name, 4096, use_openat2=use_openat2)
        with pytest.raises(UnsafeFile, match=why):
            stat_beneath(share, name, use_openat2=use_openat2)
    with pytest.raises(FileNotFoundError):
        read_bounded(share, "missing", 10, use_openat2=use_openat2)


def test_a_read_is_bounded(tmp_path: Path, use_openat2: bool) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    assert len(read_bounded(tmp_path, "big", 4096, use_openat2=use_openat2)) == 4096


def test_a_copy_is_bounded_and_replaces_a_planted_link_without_following_it(
    tmp_path: Path, secret: Path, use_openat2: bool
) -> None:
    share, out = tmp_path / "share", tmp_path / "out"
    share.mkdir()
    out.mkdir()
    (share / "result").write_bytes(b"r" * 1000)
    with pytest.raises(UnsafeFile, match="over the bound"):
        copy_bounded(share, "result", out / "result", 999, use_openat2=use_openat2)
    assert not (out / "result").exists() and list(out.iterdir()) == [], "nothing written, no temporary left"
    os.symlink(secret, out / "result")  # a link where the output goes: replaced, never written through
    assert copy_bounded(share, "result", out / "result", 1000, use_openat2=use_openat2) == 1000
    assert not (out / "result").is_symlink() and (out / "result").read_bytes() == b"r" * 1000
    assert secret.read_text() == SECRET
    write_exclusive(out / "x", b"data")
    assert (out / "x").read_bytes() == b"data"


def test_an_output_that_links_to_a_host_file_is_not_copied(env: Env, secret: Path) -> None:
    output_job(env)
    adapter = started(env)
    os.symlink(secret, env.shared() / "result.txt")
    (env.shared() / "done").write_text("0\n")
    code = env.run(adapter, 2)
    assert code not in (None, 0), "a link is not an output"
    result = env.project / "wu_0_0_r0"
    assert not result.exists() or SECRET not in result.read_text(), "the host file went into the result"


def test_a_trigger_that_links_to_a_host_file_is_not_read(env: Env, tmp_path: Path) -> None:
    host = tmp_path / "host_trigger"
    host.write_text("0\n")
    adapter = started(env)
    os.symlink(host, env.shared() / "done")
    assert env.run(adapter, 3) is None, "a link is no completion"
    assert not (env.slot / FINISH_FILE).exists()


def test_a_heartbeat_file_that_links_to_a_busy_host_file_is_no_heartbeat(env: Env, tmp_path: Path) -> None:
    env.write_job('heartbeat_file = "alive"\nheartbeat_interval = 5')
    host = tmp_path / "busy_host_file"
    host.write_text("x")
    adapter = started(env)
    os.symlink(host, env.shared() / "alive")
    code = None
    for _ in range(20):
        os.utime(host)  # the host file keeps changing
        code = env.run(adapter, 1)
        if code is not None:
            break
    assert code is not None, "the guest never touched its heartbeat file: it counts as hung"


@pytest.mark.parametrize("plant", ["fifo-progress", "zero-trigger", "zero-progress", "host-fifo-trigger"])
def test_planted_special_files_do_not_hang_or_blow_up_the_adapter(env: Env, tmp_path: Path, plant: str) -> None:
    env.write_job('fraction_done_file = "progress"\n[backend_options]\n')
    env.shared().mkdir()
    if plant == "fifo-progress":
        os.mkfifo(env.shared() / "progress")
    elif plant == "zero-trigger":
        os.symlink("/dev/zero", env.shared() / "done")
    elif plant == "zero-progress":
        os.symlink("/dev/zero", env.shared() / "progress")
    else:
        os.mkfifo(tmp_path / "host_fifo")
        os.symlink(tmp_path / "host_fifo", env.shared() / "done")
    with program(env, tmp_path) as p:
        p.wait_status(30)
        p.wait_status(5)  # it keeps reporting ...
        assert p.abort(30) == EXIT_ABORTED_BY_CLIENT, p.stderr()  # ... and answers <abort/>


# -- 5. the job file chooses no program, URI, host or state directory -------------------------------


@pytest.mark.parametrize(
    "option",
    [
        'qemu_binary = "/bin/sh"',
        'qemu_img = "/tmp/x"',
        'uri = "qemu+ext:///session?command=/bin/sh"',
        'password_file = "/etc/shadow"',
        'state_dir = "/"',
        'vboxmanage = "/bin/sh"',
        'accel = "/bin/sh"',
    ],
)
def test_a_job_may_set_only_safe_backend_options(option: str) -> None:
    key = option.split()[0]
    with pytest.raises(JobError, match=f"'{key}'"):
        parse_toml(f'image = "d.img"\n[backend_options]\n{option}\n')
    assert parse_toml('image = "d.img"\n[backend_options]\naccel = "tcg"\n').backend_options == {"accel": "tcg"}


def test_a_job_with_a_host_option_exits_206_naming_the_key(env: Env, tmp_path: Path) -> None:
    env.write_job('[backend_options]\nqemu_binary = "/bin/sh"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        env={**os.environ, CONFIG_ENV: str(memory_profile_config(tmp_path))},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INIT_FAILURE
    assert "'qemu_binary'" in proc.stderr


def test_a_job_can_only_name_a_profile_of_the_host(env: Env, tmp_path: Path) -> None:
    # no host configuration: only the built-in QEMU profile
    nothing = tmp_path / "no-such-config.toml"
    env.write_job()  # backend = "memory"
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        env={**os.environ, CONFIG_ENV: str(nothing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INIT_FAILURE
    assert "'memory'" in proc.stderr and "profile" in proc.stderr
    assert load_host_config(nothing).profile("qemu") == Profile("qemu", "qemu", {})


def test_the_profile_gives_the_backend_and_its_options(env: Env, tmp_path: Path) -> None:
    config = load_host_config(memory_profile_config(tmp_path, namespace="ns-{slot}"))
    seen: list[tuple[str, dict[str, object]]] = []

    def connect(backend: str, options: dict[str, object]) -> vmctl.Hypervisor:
        seen.append((backend, options))
        return env.hv

    adapter = env.adapter(connect=connect, profile=config.profile("memory"))
    assert adapter.start() is None
    assert seen == [("memory", {"namespace": f"ns-{env.slot}"})]


def test_the_builtin_qemu_profile_keeps_state_in_the_slot(env: Env) -> None:
    env.write_job(text=Path(env.project / "v1_vmctl_job.toml").read_text().replace('"memory"', '"qemu"'))
    seen: list[dict[str, object]] = []

    def connect(backend: str, options: dict[str, object]) -> vmctl.Hypervisor:
        seen.append(options)
        return env.hv

    adapter = env.adapter(connect=connect, profile=load_host_config(env.slot / "none.toml").profile("qemu"))
    assert adapter.start() is None
    assert seen == [{"state_dir": str(env.slot / "vm")}]


@pytest.mark.parametrize(
    "text, why",
    [
        ('[profiles.x]\nbackend = "qemu"\noptions = "no"\n', "options"),
        ("[profiles.x]\noptions = {}\n", "backend"),
        ("not toml [", "TOML"),
    ],
)
def test_a_bad_host_configuration_is_a_typed_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "boinc.toml"
    path.write_text(text)
    with pytest.raises(HostConfigError, match=why):
        load_host_config(path)


def test_a_host_configuration_in_the_boinc_data_directory_is_refused(env: Env) -> None:
    config = env.boinc_dir / "boinc.toml"
    config.write_text('[profiles.memory]\nbackend = "memory"\n')
    with pytest.raises(HostConfigError, match="where projects write"):
        load_host_config(config, not_under=[env.boinc_dir])
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        env={**os.environ, CONFIG_ENV: str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INIT_FAILURE
    assert "where projects write" in proc.stderr


def test_a_host_configuration_others_may_write_is_refused(tmp_path: Path) -> None:
    path = memory_profile_config(tmp_path)
    path.chmod(0o666)
    with pytest.raises(HostConfigError, match="writable"):
        load_host_config(path)


# -- 6. every job key is checked before anything touches the disk -----------------------------------


@pytest.mark.parametrize("tag", ["/any/host/path", "../up", "a/b", ".", "", "x" * 300, "sp ace", "new\nline"])
def test_a_shared_tag_that_is_not_a_plain_name_is_refused(tag: str) -> None:
    with pytest.raises(JobError, match="shared_tag"):
        parse_toml(f'image = "d.img"\nshared_dir = true\nshared_tag = {tag!r}\n'.replace("'", '"'))


def test_a_bad_shared_tag_creates_nothing(env: Env, tmp_path: Path) -> None:
    target = tmp_path / "any" / "host" / "path"
    env.write_job(f'shared_tag = "{target}"\ncopy_cmdline_to_shared = true')
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        env={**os.environ, CONFIG_ENV: str(memory_profile_config(tmp_path))},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INIT_FAILURE
    assert "shared_tag" in proc.stderr
    assert not (tmp_path / "any").exists()


# -- 7. soft links stay inside the project directory and the slot ---------------------------------


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../../etc/passwd", "../../projects/../../x"])
def test_soft_links_out_of_the_project_and_slot_are_refused(tmp_path: Path, target: str) -> None:
    slot_dir = tmp_path / "boinc" / "slots" / "0"
    slot_dir.mkdir(parents=True)
    (slot_dir / "f").write_text(f"<soft_link>{target}</soft_link>\n")
    os.symlink(target, slot_dir / "g")
    slot = Slot(slot_dir, project_dir=tmp_path / "boinc" / "projects" / "p")
    for name in ("f", "g"):
        with pytest.raises(SlotError, match="outside"):
            slot.resolve(name)


def test_a_project_file_that_links_out_is_refused(env: Env, secret: Path) -> None:
    os.symlink(secret, env.project / "sneaky")
    (env.slot / "s").write_text("<soft_link>../../projects/p/sneaky</soft_link>\n")
    with pytest.raises(SlotError, match="outside"):
        Slot(env.slot, project_dir=env.project).resolve("s")
    assert Slot(env.slot, project_dir=env.project).resolve("vm_image.img") == env.project / "v1_base.img"


def test_an_image_soft_link_out_of_the_project_fails_the_task(env: Env, secret: Path) -> None:
    (env.slot / "vm_image.img").write_text(f"<soft_link>{secret}</soft_link>\n")
    adapter = env.adapter()
    assert adapter.start() == EXIT_INIT_FAILURE
    assert env.hv.machines() == []


def test_copy_to_shared_of_a_host_file_fails_the_task(env: Env, secret: Path) -> None:
    env.write_job('copy_to_shared = ["input.dat"]')
    (env.slot / "input.dat").write_text(f"<soft_link>{secret}</soft_link>\n")
    adapter = env.adapter()
    assert adapter.start() == EXIT_INIT_FAILURE
    assert not (env.shared() / "input.dat").exists()


def test_an_output_soft_link_to_a_host_file_overwrites_nothing(env: Env, tmp_path: Path) -> None:
    victim = tmp_path / "bashrc"
    victim.write_text("the volunteer's file\n")
    env.write_job('[[output]]\nfrom = "result.txt"\nto = "result"\n')
    (env.slot / "result").write_text(f"<soft_link>{victim}</soft_link>\n")
    adapter = started(env)
    (env.shared() / "result.txt").write_text("echo owned\n")
    (env.shared() / "done").write_text("0\n")
    assert env.run(adapter, 2) not in (None, 0)
    assert victim.read_text() == "the volunteer's file\n"


def test_an_output_may_not_overwrite_an_input(env: Env) -> None:
    env.write_job('[[output]]\nfrom = "result.txt"\nto = "vm_image.img"\n')
    adapter = started(env)
    (env.shared() / "result.txt").write_text("garbage\n")
    (env.shared() / "done").write_text("0\n")
    assert env.run(adapter, 2) not in (None, 0)
    assert (env.project / "v1_base.img").read_bytes() == b"\x00" * 65536


# -- 8. parsers ------------------------------------------------------------------------------------


def test_a_deeply_nested_toml_job_is_a_job_error() -> None:
    with pytest.raises(JobError):
        parse_toml("a = " + "[" * 100_000 + "]" * 100_000 + "\n")


def test_a_deeply_nested_toml_job_exits_206(env: Env) -> None:
    env.write_job(text="x = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"], cwd=env.slot, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == EXIT_INIT_FAILURE, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n' for i in range(1, 10)
    )
    + "]>\n"
)


def test_xml_with_a_dtd_is_refused() -> None:
    with pytest.raises(JobError, match="DTD"):
        parse_vbox_xml(
            '<!DOCTYPE vbox_job [<!ENTITY m "512">]><vbox_job><memory_size_mb>&m;</memory_size_mb></vbox_job>'
        )
    with pytest.raises(JobError, match="DTD"):
        parse_vbox_xml(BILLION_LAUGHS + "<vbox_job><os_name>&lol9;</os_name></vbox_job>")
    with pytest.raises(InitDataError, match="DTD"):
        parse_init_data(BILLION_LAUGHS + "<app_init_data><app_name>&lol9;</app_name></app_init_data>")


def test_a_billion_laughs_job_exits_206(env: Env) -> None:
    env.write_job(text=BILLION_LAUGHS + "<vbox_job><os_name>&lol9;</os_name></vbox_job>\n", name="vbox_job.xml")
    (env.slot / "vmctl_job.toml").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.boinc"],
        cwd=env.slot,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)),
    )
    assert proc.returncode == EXIT_INIT_FAILURE, proc.stderr[-2000:]
    assert "DTD" in proc.stderr


# -- 9. disk use --------------------------------------------------------------------------------


def _fill(path: Path, size: int) -> None:
    with open(path, "wb") as f:  # real blocks, not a sparse file
        for _ in range(size // 65536):
            f.write(os.urandom(65536))
        f.flush()
        os.fsync(f.fileno())


def test_vm_files_past_the_disk_bound_end_the_task_with_the_disk_limit_exit(env: Env) -> None:
    env.client.write_init_data(rsc_disk_bound=2e6)
    output_job(env)
    adapter = started(env)
    assert env.run(adapter, 2) is None
    _fill(env.shared() / "junk.bin", 4 << 20)  # the guest writes past the bound
    code = env.run(adapter, CHECK_INTERVAL + 2)
    assert code == EXIT_DISK_LIMIT_EXCEEDED == 196
    assert not env.hv.machines(), "the VM is deleted, its files with it"


def test_vm_files_under_the_disk_bound_keep_the_task_running(env: Env) -> None:
    env.client.write_init_data(rsc_disk_bound=8e6)
    output_job(env)
    adapter = started(env)
    _fill(env.shared() / "data.bin", 1 << 20)
    assert env.run(adapter, CHECK_INTERVAL + 2) is None


def test_disk_use_counts_a_state_dir_outside_the_slot_and_follows_no_link(tmp_path: Path) -> None:
    slot, state = tmp_path / "slot", tmp_path / "state"
    slot.mkdir()
    state.mkdir()
    _fill(state / "disk.qcow2", 1 << 20)
    (slot / "link").symlink_to(state)  # not followed: the state dir is counted once, as a root
    roots = vm_file_roots(slot, {"state_dir": str(state)})
    assert roots == [slot, state]
    assert (1 << 20) <= (disk_usage(roots) or 0) < (2 << 20)
    assert vm_file_roots(slot, {"state_dir": str(slot / "vm")}) == [slot]


class _Reporting:
    """A machine whose backend reports its files (``disk_usage``), or cannot (``None``)."""

    def __init__(self, used: vmctl.DiskUsage | None) -> None:
        self.used = used

    def disk_usage(self) -> vmctl.DiskUsage:
        if self.used is None:
            raise vmctl.Unsupported("test", "disk_usage")
        return self.used


def test_disk_use_adds_what_the_backend_keeps_outside_the_slot_and_counts_the_slot_once(tmp_path: Path) -> None:
    slot, pool = tmp_path / "slot", tmp_path / "pool"
    (slot / "vm" / "m").mkdir(parents=True)
    pool.mkdir()
    _fill(slot / "shared.bin", 1 << 20)
    _fill(slot / "vm" / "m" / "overlay.qcow2", 1 << 20)
    _fill(pool / "overlay.qcow2", 3 << 20)
    roots = [slot]

    def bound(vm: object) -> DiskBound:
        return DiskBound(roots, 1, 0.0, machine=lambda: vm)  # type: ignore[arg-type,return-value]

    outside = vmctl.DiskUsage("m", 3 << 20, (str(pool / "overlay.qcow2"),))
    assert (5 << 20) <= (bound(_Reporting(outside)).used() or 0) < (6 << 20), "a pool volume counts"
    inside = vmctl.DiskUsage("m", 1 << 20, (str(slot / "vm" / "m"),))
    assert (2 << 20) <= (bound(_Reporting(inside)).used() or 0) < (3 << 20), "files in the slot count once"
    assert (2 << 20) <= (bound(_Reporting(None)).used() or 0) < (3 << 20), "unknown: the slot is walked"
    assert (2 << 20) <= (bound(None).used() or 0) < (3 << 20), "no VM yet: the slot is walked"


# -- 10. console log and state directory ----------------------------------------------------------


def test_the_console_log_is_created_private(env: Env) -> None:
    started(env)
    mode = (env.slot / "vm_console.log").lstat().st_mode
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600


def test_a_planted_console_log_link_is_replaced_not_followed(env: Env, secret: Path) -> None:
    os.symlink(secret, env.slot / "vm_console.log")
    started(env)
    assert not (env.slot / "vm_console.log").is_symlink()
    assert secret.read_text() == SECRET and stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_state_dir_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(vmctl.BackendUnavailable, match="writable"):
        vmctl.connect("qemu", state_dir=root)


# -- 3. trusted state outside every share ----------------------------------------------------------


def _no_share_holds(spec: vmctl.MachineSpec, paths: list[Path]) -> None:
    for tag, shared in spec.shared_dirs.items():
        for path in paths:
            assert path != shared and shared not in path.parents, f"{path} is inside the share {tag!r}"


def _vbox_job(env: Env, keys: str) -> None:
    (env.slot / "vmctl_job.toml").unlink()
    (env.project / "v1_base.img").rename(env.project / "vm.vdi")
    (env.slot / "vm_image.vdi").write_text("<soft_link>../../projects/p/vm.vdi</soft_link>\n")
    env.write_job(text=f"<vbox_job>{keys}</vbox_job>", name="vbox_job.xml")


def test_share_slot_dir_shares_a_subdirectory_never_the_slot(env: Env) -> None:
    _vbox_job(env, "<share_slot_dir/>")
    started(env)
    spec = env.vm().spec
    assert spec.shared_dirs == {"shared": env.slot / "shared"}
    trusted = [env.slot, env.slot / "vm", env.slot / "vm_console.log", env.slot / "init_data.xml"]
    _no_share_holds(spec, [*trusted, env.slot / "boinc_mmap_file", env.slot / "vmctl_job.toml"])


def test_the_project_directory_is_shared_read_only(env: Env) -> None:
    _vbox_job(env, "<share_project_dir/>")
    started(env)
    spec = env.vm().spec
    assert spec.shared_dirs["project"] == env.project
    assert spec.readonly_shares == frozenset({"project"})
    _no_share_holds(spec, [env.slot / "vm_console.log", env.slot / "init_data.xml", env.slot / "boinc_mmap_file"])


# -- 1. on real QEMU: the test guest plants links and special files in its share --------------------

HOSTILE_RUN_SH = """\
mnt=/run/hostile
mkdir -p "$mnt"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$VMCTL_SHARE_TAG" "$mnt"
ln -s {secret} "$mnt/result.txt"
ln -s /dev/zero "$mnt/progress"
mkfifo "$mnt/later" || true
echo 0 > "$mnt/done"
sync
umount "$mnt"
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hostile_guest_on_qemu_gets_no_host_file_into_its_result(tmp_path: Path, secret: Path) -> None:
    guest = ensure_test_guest()
    boinc_dir = tmp_path / "boinc"
    project, slot_dir = boinc_dir / "projects" / "p", boinc_dir / "slots" / "0"
    project.mkdir(parents=True)
    slot_dir.mkdir(parents=True)
    files = {"vmlinuz": guest.kernel, "initrd.img": guest.initrd}
    for name, source in files.items():
        os.link(source, project / name)
    (project / "run.sh").write_text(HOSTILE_RUN_SH.format(secret=secret))
    (project / "job.toml").write_text(
        f'backend = "qemu"\nkernel = "vmlinuz"\ninitrd = "initrd.img"\n'
        f'cmdline = "{guest.cmdline} vmctl.share=shared"\nmemory_mib = 256\nshared_dir = true\n'
        'copy_to_shared = ["run.sh"]\nfraction_done_file = "progress"\ncompletion_trigger_file = "done"\n'
        'temporary_exit_trigger_file = "later"\n[backend_options]\naccel = "tcg"\n'
        '[[output]]\nfrom = "result.txt"\nto = "result"\n'
    )
    links = {"vmctl_job.toml": "job.toml", "run.sh": "run.sh", "result": "wu_0_0_r0", **{n: n for n in files}}
    for open_name, physical in links.items():
        (slot_dir / open_name).write_text(f"<soft_link>../../projects/p/{physical}</soft_link>\n")
    client = FakeClient(slot_dir, project_dir=str(project), boinc_dir=str(boinc_dir))
    try:
        data = read_init_data(slot_dir)
        adapter = Adapter(
            Slot(slot_dir),
            data,
            load_job(find_job_file(slot_dir)),
            open_shared_memory(slot_dir, data.shm_key),
            reap_at_start=False,
        )
        code = adapter.start()
        deadline = time.monotonic() + 240
        tick = 0
        while code is None:
            assert time.monotonic() < deadline, "the task did not end: the adapter hangs"
            if tick % 10 == 0:
                client.heartbeat()
            client.poll()
            code = adapter.step()
            tick += 1
            time.sleep(0.1)
    finally:
        client.close()
        with contextlib.suppress(vmctl.VmctlError):
            hv = vmctl.connect("qemu", state_dir=slot_dir / "vm")
            for vm in hv.machines():
                vm.destroy()
    assert code == EXIT_CHILD_FAILED, "a link is not an output: the task fails"
    result = project / "wu_0_0_r0"
    assert not result.exists() or SECRET not in result.read_text()
    assert secret.read_text() == SECRET


# -- 10. on real QEMU: a port picked for the VM that another process takes meanwhile ---------------

THIEF = (
    "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); "
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_picked_port_another_process_takes_is_picked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guest = ensure_test_guest()
    boinc_dir = tmp_path / "boinc"
    project, slot_dir = boinc_dir / "projects" / "p", boinc_dir / "slots" / "0"
    project.mkdir(parents=True)
    slot_dir.mkdir(parents=True)
    for name, source in {"vmlinuz": guest.kernel, "initrd.img": guest.initrd}.items():
        os.link(source, project / name)
        (slot_dir / name).write_text(f"<soft_link>../../projects/p/{name}</soft_link>\n")
    (slot_dir / "vmctl_job.toml").write_text(
        f'backend = "qemu"\nkernel = "vmlinuz"\ninitrd = "initrd.img"\ncmdline = "{guest.cmdline}"\n'
        'memory_mib = 128\nnetwork = true\n[backend_options]\naccel = "tcg"\n[[port_forward]]\nguest_port = 22\n'
    )
    thief = subprocess.Popen([sys.executable, "-c", THIEF], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert thief.stdout is not None
    stolen = int(thief.stdout.readline())
    picks = iter([stolen])  # the race: the port picked is taken before QEMU binds it
    monkeypatch.setattr(vmsetup, "free_port", lambda: next(picks, None) or free_port())
    client = FakeClient(slot_dir, project_dir=str(project), boinc_dir=str(boinc_dir))
    hv = vmctl.connect("qemu", state_dir=slot_dir / "vm")
    try:
        data = read_init_data(slot_dir)
        adapter = Adapter(
            Slot(slot_dir),
            data,
            load_job(find_job_file(slot_dir)),
            open_shared_memory(slot_dir, data.shm_key),
            reap_at_start=False,
        )
        assert adapter.start() is None, "the task runs"
        (vm,) = hv.machines()
        assert vm.state is vmctl.State.RUNNING
        assert vm.spec.network is not None
        (forward,) = vm.spec.network.port_forwards
        assert forward.host_port != stolen
    finally:
        thief.communicate("")
        client.close()
        for vm in hv.machines():
            vm.destroy()
