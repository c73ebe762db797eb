"""The VirtualBox backend's parsers and error mapping over real captured VBoxManage output.

Every file under ``tests/realworld/virtualbox/`` is output a real VBoxManage printed, copied from
a public issue thread or another project's test fixture; its ``#:`` header names the source, the
command, the VirtualBox version and the host (see that directory's README). Each parser and the
error mapper run over every sample of their kind, and the simulator is asked the same commands
so that the form of each line it prints (key, quoting, value shape) can be compared with the
captured one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vmctl
from tests.contract.harness_virtualbox import load_simulator, write_wrapper
from vmctl_virtualbox._errors import map_error, parse_error
from vmctl_virtualbox._parse import (
    parse_machinereadable,
    parse_snapshot_list,
    parse_version,
    parse_vm_list,
)
from vmctl_virtualbox._vboxmanage import STARTED, VBoxManageTransport

CORPUS = Path(__file__).parent / "realworld" / "virtualbox"
REQUIRED = ("source", "command", "kind", "stream", "version", "host")
KINDS = {
    "list-vms",
    "list-runningvms",
    "showvminfo",
    "showvminfo-human",
    "snapshot-list",
    "version",
    "version-warning",
    "error",
    "empty",
    "startvm",
    "progress",
}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
VM_LINE = re.compile(r'^"(?P<name>.*)" \{(?P<uuid>' + UUID + r")\}$")
KEY_LINE = re.compile(r'^(?:"(?P<qkey>[^"]+)"|(?P<key>[^="]+))=(?P<value>.*)$')


@dataclass(frozen=True)
class Sample:
    path: Path
    header: dict[str, str]
    data: str

    @property
    def kind(self) -> str:
        return self.header["kind"]

    def __str__(self) -> str:
        return self.path.name


def load(path: Path) -> Sample:
    """A sample: ``#: key: value`` header lines, one blank line, then the output as printed."""
    text = path.read_text(encoding="utf-8")
    header: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("#: "):
        key, _, value = lines[i][3:].partition(": ")
        header[key] = value
        i += 1
    assert i < len(lines) and lines[i] == "", f"{path.name}: the header must end with one blank line"
    return Sample(path, header, "\n".join(lines[i + 1 :]))


SAMPLES = [load(p) for p in sorted(CORPUS.glob("*.txt"))]


def of_kind(*kinds: str) -> list[Sample]:
    return [s for s in SAMPLES if s.kind in kinds]


def ids(samples: list[Sample]) -> list[str]:
    return [s.path.stem for s in samples]


# -- the corpus itself ------------------------------------------------------------------------------


def test_the_corpus_is_large_and_every_sample_names_its_source() -> None:
    assert len(SAMPLES) >= 25
    for s in SAMPLES:
        missing = [k for k in REQUIRED if not s.header.get(k)]
        assert not missing, f"{s}: header lacks {missing}"
        assert s.header["source"].startswith("https://github.com/"), s
        assert s.kind in KINDS, s
        assert s.header["stream"] in ("stdout", "stderr"), s
    hosts = " ".join(s.header["host"] for s in SAMPLES)
    assert all(h in hosts for h in ("Windows", "macOS", "Linux"))


# -- parsers over every sample ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample", of_kind("list-vms", "list-runningvms"), ids=ids(of_kind("list-vms", "list-runningvms"))
)
def test_vm_lists(sample: Sample) -> None:
    expected = {}
    for line in sample.data.splitlines():
        m = VM_LINE.match(line)
        if m:
            expected[m.group("name")] = m.group("uuid")
    assert parse_vm_list(sample.data) == expected
    # A line that is not "name" {uuid} (the vboxdrv warning) is never taken for a machine.
    if "WARNING" in sample.data:
        assert expected == {}


def machine_readable_keys(data: str) -> dict[str, str]:
    """What each line of machine-readable output says, read line by line with the key anchored."""
    keys: dict[str, str] = {}
    for line in data.split("\n"):
        m = KEY_LINE.match(line)
        if m:
            keys.setdefault(m.group("qkey") or m.group("key"), m.group("value"))
    return keys


@pytest.mark.parametrize("sample", of_kind("showvminfo"), ids=ids(of_kind("showvminfo")))
def test_showvminfo_every_line_is_read_on_its_own(sample: Sample) -> None:
    info = parse_machinereadable(sample.data)
    lines = machine_readable_keys(sample.data)
    assert set(info) == set(lines), f"{sample}: keys lost or invented"
    for key, raw in lines.items():
        value = info[key]
        assert "\n" not in value, f"{sample}: {key} swallowed the next line"
        if raw.startswith('"'):
            # The value is what stood between the quotes on that line (unescaped).
            assert value.replace("\\", "") in raw.replace("\\", ""), (key, raw, value)
        else:
            assert value == raw.lstrip("="), (key, raw, value)
    if "VideoMode" in info:
        assert re.fullmatch(r"\d+,\d+,\d+", info["VideoMode"]), info["VideoMode"]
    if "VMState" in info:
        assert info["VMState"] == sample.header["state"]
        # Real output has milliseconds in a nanosecond field and no "Z" (issue 18).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}000000", info["VMStateChangeTime"])
    for key in ("CfgFile", "SnapFldr", "LogFldr"):
        if key in info and "\\\\" in lines[key]:
            assert "\\\\" not in info[key] and "\\" in info[key], "escaped Windows paths are unescaped"


@pytest.mark.parametrize("sample", of_kind("showvminfo"), ids=ids(of_kind("showvminfo")))
def test_showvminfo_through_the_transport(sample: Sample, tmp_path: Path) -> None:
    if "name" not in parse_machinereadable(sample.data):
        pytest.skip("an excerpt without the machine's name")
    (tmp_path / "out").write_text(sample.data, encoding="utf-8")
    tool = fake_tool(tmp_path, f'cat "{tmp_path / "out"}"\n')
    info = VBoxManageTransport(str(tool)).info("vm")
    raw = machine_readable_keys(sample.data)
    assert info.state == sample.header["state"]
    assert info.uuid == raw["UUID"].strip('"')
    assert info.memory_mib == int(raw["memory"])
    assert info.name == raw["name"].strip('"')


@pytest.mark.parametrize("sample", of_kind("snapshot-list"), ids=ids(of_kind("snapshot-list")))
def test_snapshot_lists(sample: Sample) -> None:
    nodes = parse_snapshot_list(sample.data)
    uuids = re.findall(r'^SnapshotUUID(?:-\d+)*="(' + UUID + ')"$', sample.data, re.M)
    assert [n.uuid for n in nodes] == uuids
    by_uuid = {n.uuid: n for n in nodes}
    for n in nodes:
        assert n.parent_uuid is None or n.parent_uuid in by_uuid
    current = re.search(r'^CurrentSnapshotUUID="(' + UUID + ')"$', sample.data, re.M)
    assert [n.uuid for n in nodes if n.current] == ([current.group(1)] if current else [])


@pytest.mark.parametrize("sample", of_kind("showvminfo"), ids=ids(of_kind("showvminfo")))
def test_snapshots_inside_showvminfo(sample: Sample) -> None:
    nodes = parse_snapshot_list(sample.data)
    assert len(nodes) == len(re.findall(r"^SnapshotUUID(?:-\d+)*=", sample.data, re.M))


@pytest.mark.parametrize(
    "sample", of_kind("version", "version-warning"), ids=ids(of_kind("version", "version-warning"))
)
def test_versions(sample: Sample, tmp_path: Path) -> None:
    version, warning = parse_version(sample.data)
    assert version is not None and version.startswith(sample.header["version"].split()[0])
    assert bool(warning) == (sample.kind == "version-warning")
    (tmp_path / "out").write_text(sample.data, encoding="utf-8")
    tool = fake_tool(tmp_path, f'cat "{tmp_path / "out"}"\n')
    if sample.kind == "version":
        assert VBoxManageTransport(str(tool)).version() == version
    else:
        with pytest.raises(vmctl.BackendUnavailable, match="not properly set up"):
            vmctl.connect("virtualbox", vboxmanage=str(tool), base_folder=str(tmp_path / "vms"))


def expected_error(sample: Sample, err: vmctl.VmctlError) -> None:
    expect = sample.header["expect"]
    if expect.startswith("BackendError:"):
        assert type(err) is vmctl.BackendError, (sample.path.name, err)
        assert err.code == expect.split(":", 1)[1], (sample.path.name, err.code)
    else:
        assert type(err) is getattr(vmctl, expect), (sample.path.name, err)


@pytest.mark.parametrize("sample", of_kind("error"), ids=ids(of_kind("error")))
def test_errors_map_by_code_and_form(sample: Sample) -> None:
    info = parse_error(sample.data)
    assert info is not None and info.text
    # The machine's name does not decide: a machine named snapshot-runner is still a machine.
    for machine in ("snapshot-runner", "web"):
        err = map_error(info, command=["VBoxManage"], status=1, stderr=sample.data, machine=machine)
        expected_error(sample, err)
    if "Details: code" in sample.data or "Code " in sample.data:
        assert info.code is not None and info.hresult is not None


@pytest.mark.parametrize("sample", of_kind("progress", "startvm"), ids=ids(of_kind("progress", "startvm")))
def test_success_output_is_not_an_error(sample: Sample) -> None:
    assert parse_error(sample.data) is None
    if sample.kind == "startvm":
        assert STARTED in sample.data


@pytest.mark.parametrize("sample", of_kind("showvminfo-human"), ids=ids(of_kind("showvminfo-human")))
def test_human_readable_output_is_not_taken_for_machine_readable(sample: Sample) -> None:
    assert "VMState" not in parse_machinereadable(sample.data)


@pytest.mark.parametrize("sample", of_kind("empty"), ids=ids(of_kind("empty")))
def test_nothing_printed_is_a_clear_error(sample: Sample, tmp_path: Path) -> None:
    (tmp_path / "out").write_text(sample.data, encoding="utf-8")
    tool = fake_tool(tmp_path, f'cat "{tmp_path / "out"}"\n')
    with pytest.raises(vmctl.BackendError, match="printed nothing") as err:
        VBoxManageTransport(str(tool)).info("vm")
    assert err.value.code == "protocol"


def fake_tool(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "VBoxManage"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# -- the simulator against the corpus ---------------------------------------------------------------


def shape(value: str) -> str:
    """The form of a value as printed: quoted/bare and what it looks like, not what it says."""
    if re.fullmatch(r'"\d+,\d+,\d+"@-?\d+,-?\d+ \d+', value):
        return "videomode"
    if re.fullmatch(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}"', value):
        return "time"
    if re.fullmatch(r'"' + UUID + '"', value):
        return "uuid"
    if re.fullmatch(r'"[^"]*"', value):
        return "string"
    if re.fullmatch(r"=?-?\d+", value):
        return "number"
    return "bare"


def real_shapes(kind: str) -> dict[str, set[str]]:
    shapes: dict[str, set[str]] = {}
    for s in of_kind(kind):
        for line in s.data.split("\n"):
            m = KEY_LINE.match(line)
            if m:
                key = f'"{m.group("qkey")}"' if m.group("qkey") else m.group("key")
                shapes.setdefault(key, set()).add(shape(m.group("value")))
    return shapes


@dataclass
class Sim:
    vbm: Path
    home: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run([str(self.vbm), *args], capture_output=True, text=True, timeout=60, env=full)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    module = load_simulator()
    home = tmp_path / "home"
    s = Sim(write_wrapper(tmp_path / "bin" / "VBoxManage", home), home)
    disk = tmp_path / "disk.vdi"
    disk.write_bytes(b"\0" * 4096)
    assert s.run("createvm", "--name", "web", "--basefolder", str(tmp_path / "vms"), "--register").returncode == 0
    s.run("storagectl", "web", "--name", "SATA", "--add", "sata", "--portcount", "1")
    s.run(
        "storageattach",
        "web",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        str(disk),
    )
    s.run("modifyvm", "web", "--nic1", "nat", "--memory", "256")
    try:
        yield s
    finally:
        s.run("controlvm", "web", "poweroff")
        for pid in module.vm_processes(home):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def compare_lines(printed: str, kind: str) -> int:
    """Every key the simulator shares with real output of ``kind`` has a form seen in the captures."""
    real = real_shapes(kind)
    shared = 0
    for line in printed.split("\n"):
        m = KEY_LINE.match(line)
        if not m:
            continue
        key = f'"{m.group("qkey")}"' if m.group("qkey") else m.group("key")
        if key in real:
            shared += 1
            assert shape(m.group("value")) in real[key], f"{line!r}: real output prints {key} as {real[key]}"
    return shared


def test_simulator_showvminfo_has_the_real_forms(sim: Sim) -> None:
    stopped = sim.run("showvminfo", "web", "--machinereadable")
    assert stopped.returncode == 0
    assert compare_lines(stopped.stdout, "showvminfo") >= 40
    assert sim.run("startvm", "web", "--type", "headless").returncode == 0
    running = sim.run("showvminfo", "web", "--machinereadable").stdout
    assert compare_lines(running, "showvminfo") >= 40
    # Keys every real capture of a running machine prints, and the simulator must print too.
    running_keys = set(machine_readable_keys(running))
    for s in of_kind("showvminfo"):
        full = "name" in machine_readable_keys(s.data) and "excerpt" not in s.header.get("note", "")
        if s.header.get("state") == "running" and full:
            assert {"SessionName", "VideoMode"} <= set(machine_readable_keys(s.data))
    assert {"SessionName", "VideoMode"} <= running_keys


def test_simulator_lists_and_version_have_the_real_forms(sim: Sim) -> None:
    for line in sim.run("list", "vms").stdout.splitlines():
        assert VM_LINE.match(line), line
    assert sim.run("list", "runningvms").stdout == ""  # like the real one with nothing running
    version = sim.run("--version").stdout
    real = [s.data for s in of_kind("version")]
    assert all(re.fullmatch(r"\d+\.\d+\.\d+r\d+\n", v) for v in [version, *real])
    warned = sim.run("--version", env={"VBOXSIM_NO_VBOXDRV": "1"}).stdout
    template = next(s.data for s in of_kind("version-warning") if "/sbin/vboxconfig" in s.data)

    def without_kernel(text: str) -> str:
        return re.sub(r"\(\S+\)", "()", text.rsplit("\n", 2)[0])

    assert without_kernel(warned) == without_kernel(template)


def test_simulator_snapshot_lists_have_the_real_forms(sim: Sim) -> None:
    empty = sim.run("snapshot", "web", "list", "--machinereadable")
    real_empty = next(s for s in of_kind("snapshot-list") if "does not have" in s.data)
    assert (empty.returncode, empty.stdout) == (int(real_empty.header["exit"]), real_empty.data)
    for name in ("base", "next", "last"):
        assert sim.run("snapshot", "web", "take", name).returncode == 0
    listed = sim.run("snapshot", "web", "list", "--machinereadable").stdout
    assert compare_lines(listed, "snapshot-list") == len([x for x in listed.split("\n") if x])
    assert re.search(r'^CurrentSnapshotNode="SnapshotName(-\d+)*"$', listed, re.M)


def error_form(text: str) -> list[str]:
    """An error's lines with names, numbers and quoted text taken out."""
    text = re.sub(r"VBoxManage(\.exe)?: ", "VBoxManage: ", text)
    text = re.sub(r"'[^']*'", "'N'", text)
    text = re.sub(r'"[^"]*"', '"C"', text)
    text = re.sub(r"0x[0-9a-fA-F]+", "0xH", text)
    text = re.sub(r"of file VBoxManage\w*\.cpp", "of file VBoxManageX.cpp", text)
    text = re.sub(r"\b\d+\b", "0", text)
    return [line for line in text.split("\n") if line.startswith("VBoxManage: error:")]


def test_simulator_errors_have_the_real_forms(sim: Sim) -> None:
    real = {tuple(error_form(s.data)[:1]) for s in of_kind("error")}
    details = {line for s in of_kind("error") for line in error_form(s.data)[1:]}
    cases = [
        sim.run("snapshot", "web", "restore", "no-such"),
        sim.run("showvminfo", "nobody", "--machinereadable"),
    ]
    sim.run("startvm", "web", "--type", "headless")
    sim.run("controlvm", "web", "pause")
    cases.append(sim.run("controlvm", "web", "acpipowerbutton"))
    for proc in cases:
        form = error_form(proc.stderr)
        assert proc.returncode == 1 and form, proc.stderr
        assert tuple(form[:1]) in real, f"no real error has the form {form[0]!r}"
        # "Details: code X (0x...), component C, interface I, callee K" has the real shape.
        shape_of = [re.sub(r"code \w+ \(0xH\), component \w+, interface \w+", "code", d) for d in form[1:]]
        real_shapes_ = {re.sub(r"code \w+ \(0xH\), component \w+, interface \w+", "code", d) for d in details}
        for line in shape_of:
            assert line in real_shapes_, line


def test_simulator_under_a_c_locale_prints_nothing_like_virtualbox_70(sim: Sim) -> None:
    (real,) = of_kind("empty")
    proc = sim.run("list", "systemproperties", env={"LANG": "C", "LC_ALL": "C"})
    assert proc.stdout == real.data == "" and proc.returncode == 0
    assert sim.run("list", "systemproperties").stdout.startswith("API version:")
