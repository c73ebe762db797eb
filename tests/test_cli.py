"""The ``vmctl`` command: every command, its JSON output and its exit codes.

Most tests call ``vmctl.cli.main`` in-process against the memory backend (each test in its own
namespace); a few run the installed console script in a subprocess, one of them against QEMU.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl.cli import EXIT_CODES, build_parser, main, parse_options
from vmctl_memory import MemoryHypervisor, MemoryMachine

VMCTL = Path(sys.executable).parent / "vmctl"
_namespaces = itertools.count(1)


class Run:
    """Runs ``main`` against one memory namespace and keeps what it printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str], namespace: str, disk: Path) -> None:
        self.capsys = capsys
        self.namespace = namespace
        self.disk = disk
        self.out = self.err = ""

    def __call__(self, *argv: str, backend: bool = True) -> int:
        prefix = ["--backend", "memory", "--option", f"namespace={self.namespace}"] if backend else []
        code = main([*prefix, *argv])
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def json(self, *argv: str) -> Any:
        assert self(*argv, "--json") == 0, self.err
        return json.loads(self.out)

    def create(self, name: str, *extra: str) -> None:
        assert self("create", name, "--disk", str(self.disk), *extra) == 0, self.err

    def hv(self) -> MemoryHypervisor:
        return MemoryHypervisor(namespace=self.namespace)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.delenv("VMCTL_BACKEND", raising=False)
    monkeypatch.delenv("VMCTL_OPTIONS", raising=False)
    monkeypatch.setenv("VMCTL_PROGRESS", "0")
    disk = tmp_path / "base.img"
    disk.write_bytes(b"\0" * 4096)
    r = Run(capsys, f"cli-{os.getpid()}-{next(_namespaces)}", disk)
    yield r
    for vm in r.hv().machines():
        vm.destroy()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vmctl: error: "), err
    return lines[0]


# -- listing commands ----------------------------------------------------------------------------------
def test_backends_text_and_json(run: Run) -> None:
    assert run("backends", backend=False) == 0
    assert run.out.splitlines()[0].split() == ["BACKEND", "USABLE", "DESCRIPTION"]
    assert any(line.split()[:2] == ["memory", "yes"] for line in run.out.splitlines())
    infos = {b["name"]: b for b in run.json("backends")}
    assert infos["memory"]["usable"] is True
    assert set(infos["memory"]) == {"name", "usable", "reason", "hint", "description"}
    assert set(infos) == {b.name for b in vmctl.backends()}


def test_list_empty_prints_header_and_empty_json(run: Run) -> None:
    assert run("list") == 0
    assert run.out.split() == ["NAME", "STATE", "CPUS", "MEMORY", "PID"]
    assert run.json("list") == []


def test_create_from_flags_then_list_and_show(run: Run, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    run.create("web", "--memory", "1G", "--cpus", "2", "--forward", "8080:80", "--forward", "5353:53/udp",
               "--share", f"data={share}")  # fmt: skip
    assert run.out.strip() == "web: created (stopped)"
    [item] = run.json("list")
    assert item == {
        "name": "web",
        "backend": "memory",
        "state": "stopped",
        "pid": None,
        "cpus": 2,
        "memory_mib": 1024,
        "managed": True,
    }
    shown = run.json("show", "web")
    assert shown["spec"]["memory_mib"] == 1024
    assert shown["spec"]["network"]["port_forwards"] == [
        {"host_port": 8080, "guest_port": 80, "protocol": "tcp"},
        {"host_port": 5353, "guest_port": 53, "protocol": "udp"},
    ]
    assert shown["spec"]["shared_dirs"] == {"data": str(share)}
    assert shown["capabilities"]["pause"] is True
    assert shown["snapshots"] == []
    assert run("show", "web") == 0
    assert "127.0.0.1:8080->80/tcp" in run.out and re.search(r"^state +stopped$", run.out, re.M)


def test_create_from_toml_with_relative_paths_and_overrides(run: Run, tmp_path: Path) -> None:
    specdir = tmp_path / "specs"
    (specdir / "images").mkdir(parents=True)
    (specdir / "images" / "base.img").write_bytes(b"\0" * 512)
    spec_file = specdir / "web.toml"
    spec_file.write_text(
        textwrap.dedent(
            """
            name = "from-file"
            disk = "images/base.img"
            memory_mib = 128
            cpus = 2
            [network]
            port_forwards = [{ host_port = 2222, guest_port = 22 }]
            """
        )
    )
    assert run("create", "--spec", str(spec_file)) == 0, run.err
    assert run("create", "second", "--spec", str(spec_file), "--memory", "256M", "--start") == 0, run.err
    items = {i["name"]: i for i in run.json("list")}
    assert items["from-file"]["memory_mib"] == 128 and items["from-file"]["state"] == "stopped"
    assert items["second"]["memory_mib"] == 256 and items["second"]["state"] == "running"
    assert run.json("show", "from-file")["spec"]["disk"] == str(specdir / "images" / "base.img")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('name = "x"\ndisk = "nope.img"\n', "does not exist"),
        ('name = "x"\ncolour = "blue"\n', "unknown keys: colour"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_spec_files_exit_9(run: Run, tmp_path: Path, content: str, needle: str) -> None:
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(content)
    assert run("create", "--spec", str(spec_file)) == 9
    assert needle in one_error_line(run.err)
    assert run("create", "--spec", str(tmp_path / "missing.toml")) == 9
    assert "cannot read" in one_error_line(run.err)


def test_create_refusals(run: Run) -> None:
    run.create("dup")
    assert run("create", "dup", "--disk", str(run.disk)) == 10
    assert "already exists" in one_error_line(run.err)
    assert run("create", "../evil", "--disk", str(run.disk)) == 9
    assert run("create", "m", "--disk", str(run.disk), "--memory", "lots") == 9
    assert run("create", "m", "--disk", str(run.disk), "--forward", "22") == 9
    assert run("create", "m", "--disk", str(run.disk), "--share", "nodir") == 9
    assert run("create", "--disk", str(run.disk)) == 2
    assert "needs a NAME" in one_error_line(run.err)
    assert [i["name"] for i in run.json("list")] == ["dup"]


# -- verbs ------------------------------------------------------------------------------------------------
def state_of(run: Run, name: str) -> str:
    return str(run.json("show", name)["state"])


def test_lifecycle_verbs(run: Run) -> None:
    run.create("vm")
    assert run("start", "vm") == 0 and run.out.strip() == "vm: running"
    assert run("pause", "vm") == 0 and run.out.strip() == "vm: paused"
    assert run("resume", "vm") == 0 and run.out.strip() == "vm: running"
    assert run("suspend", "vm") == 0 and run.out.strip() == "vm: suspended"
    assert run.json("show", "vm")["pid"] is None
    assert run("start", "vm") == 0 and state_of(run, "vm") == "running"
    assert run("restart", "vm") == 0 and run.out.strip() == "vm: running (graceful reboot)"
    assert run("restart", "vm", "--hard") == 0 and run.out.strip() == "vm: running (hard reset)"
    assert run("stop", "vm", "--timeout", "5") == 0 and run.out.strip() == "vm: stopped (graceful)"
    assert run("start", "vm") == 0
    assert run("poweroff", "vm") == 0 and run.out.strip() == "vm: stopped"
    assert run("destroy", "vm") == 0 and run.out.strip() == "vm: destroyed"
    assert run.json("list") == []


def test_stop_says_when_it_had_to_force(run: Run) -> None:
    run.create("stubborn", "--start")
    vm = run.hv().machine("stubborn")
    assert isinstance(vm, MemoryMachine)
    vm.set_guest_ignores_power_button()
    assert run("stop", "stubborn", "--timeout", "0.3") == 0
    assert run.out.strip() == "vm: stopped (forced: the guest ignored the power button)".replace("vm", "stubborn")
    assert "ignored the power button" in run.err  # the library's warning, shown as one line
    assert run.err.startswith("vmctl: warning: ")


def test_verbs_take_several_names(run: Run) -> None:
    run.create("a")
    run.create("b")
    assert run("start", "a", "b") == 0
    assert run.out.splitlines() == ["a: running", "b: running"]
    assert run("destroy", "a", "b") == 0
    assert run.json("list") == []


def test_snapshot_commands(run: Run) -> None:
    run.create("vm", "--start")
    assert run("snapshot", "take", "vm", "s1", "-d", "first one") == 0
    assert run.out.strip() == "vm: snapshot s1 taken (with memory)"
    assert run("poweroff", "vm") == 0
    assert run("snapshot", "take", "vm", "s2") == 0
    assert run.out.strip() == "vm: snapshot s2 taken (disk only)"
    snaps = run.json("snapshot", "list", "vm")
    assert [(s["name"], s["has_memory"], s["description"]) for s in snaps] == [
        ("s1", True, "first one"),
        ("s2", False, ""),
    ]
    assert run("snapshot", "list", "vm") == 0
    assert run.out.splitlines()[0].split() == ["NAME", "CREATED", "MEMORY", "PARENT", "DESCRIPTION"]
    assert run("snapshot", "revert", "vm", "s1") == 0 and run.out.strip() == "vm: reverted to s1 (running)"
    assert run("snapshot", "revert", "vm", "s2") == 0 and run.out.strip() == "vm: reverted to s2 (stopped)"
    assert run("snapshot", "delete", "vm", "s1") == 0
    assert [s["name"] for s in run.json("snapshot", "list", "vm")] == ["s2"]
    assert run("snapshot", "revert", "vm", "s1") == 3
    assert "no snapshot named 's1'" in one_error_line(run.err)
    assert run("snapshot", "take", "vm", "s2") == 9


def test_screenshot_writes_a_png(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("vm")
    assert run("screenshot", "vm") == 4  # stopped: nothing on the screen
    assert "cannot screenshot machine 'vm' while it is stopped" in one_error_line(run.err)
    assert run("start", "vm") == 0
    target = tmp_path / "shots" / "vm.png"
    target.parent.mkdir()
    assert run("screenshot", "vm", "-o", str(target)) == 0, run.err
    png = target.read_bytes()
    shot = vmctl.Screenshot(png)  # checks the signature and the IHDR chunk
    assert run.out.strip() == f"vm: screenshot {shot.width}x{shot.height} written to {target}"
    monkeypatch.chdir(tmp_path)
    assert run("screenshot", "vm") == 0 and (tmp_path / "vm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("screenshot", "nope") == 3


def test_screenshot_to_standard_output(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("vm", "--start")
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    assert run("screenshot", "vm", "-o", "-") == 0
    assert isinstance(stdout.buffer, io.BytesIO)
    vmctl.Screenshot(stdout.buffer.getvalue())


def test_usage_json_and_text(run: Run) -> None:
    run.create("up", "--start", "--memory", "64")
    run.create("down")
    usages = {u["machine"]: u for u in run.json("usage")}
    assert set(usages) == {"up", "down"}
    assert usages["up"]["cpu_seconds"] >= 0 and usages["up"]["memory_bytes"] == 64 << 20
    assert usages["down"]["cpu_seconds"] is None
    assert [u["machine"] for u in run.json("usage", "down")] == ["down"]
    assert run("usage") == 0
    assert run.out.splitlines()[0].split()[:3] == ["NAME", "CPU", "TIME"]
    assert "64.0 MiB" in run.out
    assert run("usage", "ghost") == 3


# -- top ----------------------------------------------------------------------------------------------------
def test_top_json_rates(run: Run) -> None:
    run.create("busy", "--start")
    run.create("frozen", "--start")
    assert run("pause", "frozen") == 0
    run.create("off")
    assert run("top", "--json", "--interval", "0.3", "--iterations", "2") == 0, run.err
    frames = [json.loads(line) for line in run.out.splitlines()]
    assert len(frames) == 2
    for frame in frames:
        assert frame["backend"] == "memory"
        rows = {m["name"]: m for m in frame["machines"]}
        assert [m["name"] for m in frame["machines"]] == ["busy", "frozen", "off"]
        assert 60 < rows["busy"]["cpu_percent"] < 140  # the memory guest burns one CPU while running
        assert rows["frozen"]["state"] == "paused" and rows["frozen"]["cpu_percent"] == 0
        assert rows["off"]["cpu_percent"] is None and rows["off"]["memory_bytes"] is None
        assert rows["busy"]["disk_read_rate"] is None  # not measured by this backend


def test_top_text_when_not_a_terminal(run: Run) -> None:
    run.create("busy", "--start")
    assert run("top", "--interval", "0.05", "--iterations", "3") == 0
    assert "\x1b" not in run.out
    frames = re.split(r"\n\n(?=vmctl top)", run.out)
    assert len(frames) == 3
    for frame in frames:
        lines = frame.strip("\n").splitlines()
        assert lines[0].startswith("vmctl top - memory - 1 machine, 1 running")
        assert lines[2].split() == ["NAME", "STATE", "CPU%", "MEMORY", "DISK", "READ", "DISK", "WRITE", "NET", "RX",
                                    "NET", "TX"]  # fmt: skip
        assert lines[3].split()[:2] == ["busy", "running"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_top_redraws_in_place_on_a_terminal(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("busy", "--start")
    tty = _Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    assert (
        main(["--backend", "memory", "-o", f"namespace={run.namespace}", "top", "-n", "0.05", "--iterations", "2"]) == 0
    )
    out = tty.getvalue()
    assert out.startswith("\x1b[?25l\x1b[2J")  # cursor hidden, screen cleared once
    assert out.endswith("\x1b[?25h")  # cursor shown again
    assert out.count("\x1b[H") == 3  # a first frame at once, then one per refresh, each from the top
    assert "\x1b[K" in out and "busy" in out


def test_top_stops_quietly_on_ctrl_c(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("vmctl.cli.time.sleep", interrupted)
    assert run("top") == 0
    assert run.err == ""


def test_top_refuses_a_bad_interval(run: Run) -> None:
    assert run("top", "--interval", "0") == 2


# -- errors and exit codes -------------------------------------------------------------------------------
def test_not_found_and_invalid_state(run: Run) -> None:
    assert run("show", "ghost") == 3
    assert one_error_line(run.err) == "vmctl: error: no machine named 'ghost' on backend 'memory'"
    run.create("vm")
    assert run("pause", "vm") == 4
    assert one_error_line(run.err) == (
        "vmctl: error: cannot pause machine 'vm' while it is stopped (allowed from: running)"
    )
    assert run("resume", "vm") == 4


def test_unknown_backend_is_8(run: Run) -> None:
    assert run("--backend", "no-such", "list", backend=False) == 8
    assert "no backend of that name is installed" in one_error_line(run.err)


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["start"], ["snapshot"], ["snapshot", "take", "vm"], ["-o", "novalue", "list"], ["--bogus"]],
)
def test_usage_errors_are_2(run: Run, argv: list[str]) -> None:
    assert run(*argv) == 2
    one_error_line(run.err)


def test_help_and_version(run: Run) -> None:
    assert run("--help", backend=False) == 0
    for command in ("backends", "list", "show", "create", "start", "stop", "poweroff", "pause", "resume", "suspend",
                    "restart", "snapshot", "usage", "destroy", "top"):  # fmt: skip
        assert command in run.out
    assert run("--version", backend=False) == 0
    assert run.out.strip() == f"vmctl {vmctl.__version__}"


def _raise(exc: BaseException) -> Any:
    def raiser(self: Any, timeout: float) -> None:
        raise exc

    return raiser


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (vmctl.MachineNotFound("vm", "memory"), 3),
        (vmctl.SnapshotNotFound("vm", "s"), 3),
        (vmctl.InvalidState("vm", "start", vmctl.State.RUNNING), 4),
        (vmctl.OperationTimeout("booting vm", 5), 5),
        (vmctl.BackendError("qemu-img failed (exit 1): disk full", command=["qemu-img"], status=1), 6),
        (vmctl.Unsupported("memory", "start"), 7),
        (vmctl.BackendUnavailable("memory", "gone"), 8),
        (vmctl.InvalidSpec("disk", "bad"), 9),
        (vmctl.MachineExists("vm"), 10),
        (vmctl.VmctlError("something else"), 1),
        (RuntimeError("a bug"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_code_per_error_class(run: Run, monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int) -> None:
    run.create("vm")
    monkeypatch.setattr(MemoryMachine, "_do_start", _raise(exc))
    assert run("start", "vm") == code
    line = run.err.strip()
    assert "\n" not in line and "Traceback" not in line
    if isinstance(exc, RuntimeError):
        assert line == "vmctl: error: RuntimeError: a bug (run with --debug for the traceback)"
    elif isinstance(exc, KeyboardInterrupt):
        assert line == "vmctl: interrupted"
    else:
        assert line == f"vmctl: error: {exc}"


def test_exit_codes_are_distinct_per_class() -> None:
    codes = dict(EXIT_CODES)
    distinct = [vmctl.MachineNotFound, vmctl.InvalidState, vmctl.OperationTimeout, vmctl.BackendError,
                vmctl.Unsupported, vmctl.BackendUnavailable, vmctl.InvalidSpec, vmctl.MachineExists]  # fmt: skip
    assert len({codes[c] for c in distinct}) == len(distinct)
    assert all(codes[c] not in (0, 1, 2, 130) for c in distinct)


def test_debug_shows_the_traceback_and_the_tool_output(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("vm")
    err = vmctl.BackendError(
        "qemu-img failed (exit 1): disk full", command=["qemu-img", "create"], status=1, stderr="line one\nline two"
    )
    monkeypatch.setattr(MemoryMachine, "_do_start", _raise(err))
    assert run("--debug", "start", "vm") == 6
    assert "Traceback (most recent call last)" in run.err
    assert "command: ['qemu-img', 'create']" in run.err and "line two" in run.err
    assert run.err.strip().splitlines()[-1] == "vmctl: error: qemu-img failed (exit 1): disk full"
    monkeypatch.setattr(MemoryMachine, "_do_start", _raise(RuntimeError("boom")))
    assert run("--debug", "start", "vm") == 1
    assert "Traceback" in run.err and run.err.strip().endswith("vmctl: error: RuntimeError: boom")


def test_errors_with_newlines_stay_on_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("vm")
    monkeypatch.setattr(MemoryMachine, "_do_start", _raise(vmctl.BackendError("failed:\n  detail\n")))
    assert run("start", "vm") == 6
    assert one_error_line(run.err) == "vmctl: error: failed: detail"


def test_verbose_logs_each_verb(run: Run) -> None:
    run.create("vm")
    assert run("-v", "start", "vm") == 0
    assert "vmctl: info: vm: start (from stopped)" in run.err
    assert run("start", "vm") == 4  # and logging is back to warnings only afterwards
    assert "info" not in run.err


# -- backend selection and options -------------------------------------------------------------------------
def test_backend_and_options_from_the_environment(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.create("envvm")
    monkeypatch.setenv("VMCTL_BACKEND", "memory")
    monkeypatch.setenv("VMCTL_OPTIONS", f"namespace={run.namespace}")
    assert run("list", "--json", backend=False) == 0
    assert [m["name"] for m in json.loads(run.out)] == ["envvm"]
    # --option wins over the environment
    assert run("-o", "namespace=elsewhere-empty", "list", "--json", backend=False) == 0
    assert json.loads(run.out) == []
    monkeypatch.setenv("VMCTL_OPTIONS", "namespace='unclosed")
    assert run("list", backend=False) == 2


def test_parse_options_converts_booleans_and_integers() -> None:
    assert parse_options(["uri=qemu:///system", "port=443", "insecure=false", "key-name=x=y"]) == {
        "uri": "qemu:///system",
        "port": 443,
        "insecure": False,
        "key_name": "x=y",
    }


def test_the_default_backend_is_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMCTL_BACKEND", raising=False)
    assert build_parser().parse_args(["list"]).backend == "qemu"
    monkeypatch.setenv("VMCTL_BACKEND", "libvirt")
    assert build_parser().parse_args(["list"]).backend == "libvirt"


# -- the installed console script -----------------------------------------------------------------------------
def _script(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "VMCTL_PROGRESS": "0", **(env or {})}
    return subprocess.run([str(VMCTL), *argv], capture_output=True, text=True, env=full_env, timeout=timeout)


def test_console_script_exit_codes() -> None:
    proc = _script("--backend", "no-such", "list")
    assert proc.returncode == 8 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("vmctl: error: backend 'no-such'")
    proc = _script("--backend", "memory", "show", "ghost")
    assert proc.returncode == 3
    proc = _script("--backend", "memory", "list", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


@pytest.mark.slow
def test_console_script_against_qemu(tmp_path: Path) -> None:
    from vmctl.testguest import ensure_test_guest

    guest = ensure_test_guest()
    env = {"VMCTL_BACKEND": "qemu", "VMCTL_OPTIONS": f"state_dir={tmp_path / 'state'} accel=tcg"}
    try:
        proc = _script("create", "cli-qemu", "--disk", str(guest.disk), "--kernel", str(guest.kernel),
                       "--initrd", str(guest.initrd), "--cmdline", guest.cmdline, "--memory", "128M",
                       "--serial-log", str(tmp_path / "console.log"), "--start", env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        [item] = json.loads(_script("list", "--json", env=env).stdout)
        assert item["name"] == "cli-qemu" and item["state"] == "running" and item["memory_mib"] == 128
        assert isinstance(item["pid"], int) and item["pid"] > 0
        proc = _script("top", "--json", "-n", "0.5", "--iterations", "1", env=env)
        [row] = json.loads(proc.stdout)["machines"]
        assert row["cpu_percent"] is not None and row["cpu_percent"] > 0 and row["memory_bytes"] > 0
        proc = _script("snapshot", "take", "cli-qemu", "s1", env=env, timeout=120)
        assert proc.returncode == 0 and "with memory" in proc.stdout, proc.stderr
        assert _script("resume", "cli-qemu", env=env).returncode == 4
        proc = _script("poweroff", "cli-qemu", env=env)
        assert proc.returncode == 0 and proc.stdout.strip() == "cli-qemu: stopped"
    finally:
        proc = _script("destroy", "cli-qemu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(_script("list", "--json", env=env).stdout) == []


# -- import --------------------------------------------------------------------------------------------
def test_import_an_ova_with_overrides_and_refusals(run: Run, tmp_path: Path) -> None:
    from .ova_build import STREAM_VMDK, descriptor, ova

    app = ova(tmp_path / "app.ova", "app.ovf", descriptor("appliance-1", [("d.vmdk", 1 << 20, STREAM_VMDK)],
              memory_mib=192, cpus=2), [("d.vmdk", b"KDMV")])  # fmt: skip
    assert run("import", str(app)) == 0, run.err
    assert run.out.strip() == "appliance-1: imported (stopped)"
    assert run("import", str(app), "--name", "web", "--memory", "1G", "--forward", "8080:80", "--start") == 0, run.err
    shown = run.json("show", "web")
    assert (shown["state"], shown["spec"]["memory_mib"], shown["spec"]["cpus"]) == ("running", 1024, 2)
    assert shown["spec"]["network"]["port_forwards"] == [{"host_port": 8080, "guest_port": 80, "protocol": "tcp"}]
    assert run("import", str(app)) == 10
    bad = tmp_path / "bad.ova"
    bad.write_bytes(app.read_bytes().replace(b"KDMV", b"KDMX"))  # the manifest no longer matches
    assert run("import", str(bad), "--name", "bad") == 9
    assert "manifest check of 'd.vmdk' failed" in one_error_line(run.err)
    assert {vm["name"] for vm in run.json("list")} == {"appliance-1", "web"}
