"""The vmware backend's parsers over every real capture in tests/realworld/vmware/, and the vmrun
simulator checked against the same captures line by line.

Each sample file names its source, product and host in a ``#:`` header (see
tests/contract/harness_vmware.py ``realworld_sample``); what follows is what VMware printed or wrote.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.contract.harness import wait_until
from tests.contract.harness_vmware import (
    fake_vmdk,
    load_simulator,
    make_vmrun,
    realworld_sample,
    realworld_samples,
    vmx_processes,
)
from vmctl_vmware import _errors as E
from vmctl_vmware._errors import VmrunError, check_result
from vmctl_vmware._machine import parse_count_list
from vmctl_vmware._vmrun import Vmrun
from vmctl_vmware._vmx import VmxFile, parse_line

ARGV = ["vmrun", "-T", "ws", "verb", "/vms/a/a.vmx"]

#: What each captured error means; every error sample must be listed (a new one needs a decision).
ERROR_KINDS = {
    "error-cannot-connect-vm-fusion-start.txt": E.OTHER,
    "error-cannot-read-config-fusion-start.txt": E.CONFIG_UNREADABLE,
    "error-not-powered-on-getguestip-fusion-nogui.txt": E.NOT_RUNNING,
    "error-not-powered-on-stop-ws-windows.txt": E.NOT_RUNNING,
    "error-not-supported-snapshot-player-linux.txt": E.NOT_SUPPORTED,
    "error-service-not-installed-ws12-windows.txt": E.PRODUCT_MISSING,
    "error-tools-getguestip-fusion-macos.txt": E.TOOLS_NOT_RUNNING,
    "error-tools-getguestip-fusion-nopath.txt": E.TOOLS_NOT_RUNNING,
    "error-tools-getguestip-ws-linux.txt": E.TOOLS_NOT_RUNNING,
    "error-unable-to-connect-ws-windows.txt": E.HOST_UNREACHABLE,
    "error-unknown-error-fusion10-start.txt": E.OTHER,
    "error-version-not-found-player15-windows.txt": E.PRODUCT_MISSING,
}

#: A value each .vmx/.vmsd sample must read as (checks decoding, escapes and case-insensitive keys).
KNOWN_VALUES = {
    "vmx-esxi-vmfs.vmx": ("memsize", "1024"),
    "vmx-line-unquoted-firmware-ws17.vmx": ("firmware", "efi"),
    "vmx-player15-windows-1252.vmx": ("sata0:1.fileName", "C:\\Windows.iso"),
    "vmx-ws-windows-949-2000.vmx": ("guestinfo.detailed.data", None),
    "vmx-ws-windows-shift-jis.vmx": ("displayName", "Windows 7 x64"),
    "vmx-ws-windows-utf8-cjk-share.vmx": ("sharedFolder0.guestName", "共享文件夹"),
    "vmx-ws12-windows-1252-freebsd.vmx": ("migrate.hostlog", ".\\FreeBSD-8fbc4f96.hlog"),
    "vmx-ws-windows-utf8-hw22.vmx": ("ETHERNET0.GENERATEDADDRESS", "00:0C:29:8C:5F:BA"),
    "vmsd-esxi-four-snapshots.vmsd": ("snapshot1.displayName", "SECOND"),
    "vmsd-ws-windows-1252-empty.vmsd": ("snapshot.lastUID", "3"),
}


def exit_status(header: dict[str, str]) -> int:
    """A POSIX exit status for the capture's (vmrun exits -1 after an error, i.e. 255)."""
    text = header.get("exit", "")
    return int(text) if text.isdigit() and int(text) < 256 else 255


def test_the_corpus_is_large_and_every_sample_names_its_source() -> None:
    names = realworld_samples()
    assert len(names) >= 18
    for name in names:
        header, body = realworld_sample(name)
        assert {"source", "product", "host", "kind"} <= header.keys(), name
        assert body and body.endswith(b"\n"), name
    kinds = Counter(realworld_sample(name)[0]["kind"] for name in names)
    assert kinds["vmx"] >= 5 and kinds["vmsd"] >= 2 and kinds["vmrun-error"] >= 8 and kinds["vmrun-list"] >= 3


@pytest.mark.parametrize("name", realworld_samples("vmx", "vmsd", "vmx-line"))
def test_vmx_files_round_trip_and_edit_in_place(name: str) -> None:
    _, data = realworld_sample(name)
    vmx = VmxFile.from_bytes(data, name)
    assert vmx.to_bytes() == data, "reading then writing changes no byte"
    key, value = KNOWN_VALUES[name]
    assert vmx.get(key) == value if value is not None else vmx.get(key)
    had = vmx.get("memsize") is not None
    vmx.set("memsize", "1236")
    out = vmx.to_bytes()
    before, after = data.split(b"\n"), out.split(b"\n")
    setting_lines = [ln for ln in after if (s := parse_line(ln)) is not None and s.name.lower() == b"memsize"]
    assert len(setting_lines) == 1 and setting_lines[0].endswith(b' = "1236"'), "exactly one memsize line"
    if had:
        changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert len(changed) == 1 and after[changed[0]] == setting_lines[0], "replaced where it was"
    else:
        assert out == data + b'memsize = "1236"\n', "added at the end, nothing else touched"
    assert b"\xef\xbf\xbd" not in out
    assert VmxFile.from_bytes(out).get("MEMSIZE") == "1236"
    assert VmxFile.from_bytes(out).encoding == vmx.encoding, "the file keeps its character set"


@pytest.mark.parametrize("name", realworld_samples("vmrun-list"))
def test_list_outputs_are_counted_lists_of_vmx_paths(name: str) -> None:
    _, body = realworld_sample(name)
    text = body.decode()
    assert check_result(ARGV, 0, text, "") == text
    paths = parse_count_list(text, "Total running VMs")
    assert len(paths) == int(text.split(":", 1)[1].split()[0])
    assert all(p.endswith(".vmx") and (p.startswith("/") or re.match(r"[A-Z]:\\", p)) for p in paths)


@pytest.mark.parametrize("name", realworld_samples("vmrun-error"))
def test_error_outputs_are_classified_by_what_they_say(name: str) -> None:
    header, body = realworld_sample(name)
    for status in {exit_status(header), 0}:  # some builds exit 0 after an Error: line
        with pytest.raises(VmrunError) as err:
            check_result(ARGV, status, body.decode(), header.get("stderr", ""))
        assert err.value.kind == ERROR_KINDS[name], err.value.vix_message
        assert not err.value.vix_message.startswith(("Error:", "20")), "the message is the VIX text"


def test_every_error_sample_has_a_decided_meaning() -> None:
    assert sorted(ERROR_KINDS) == realworld_samples("vmrun-error")


@pytest.mark.parametrize("name", realworld_samples("vmrun-tools-state"))
def test_tools_states_are_read_whatever_the_exit_status(name: str, tmp_path: Path) -> None:
    header, body = realworld_sample(name)
    status = 254 if header["exit"].startswith("non-zero") else exit_status(header) if header["exit"].isdigit() else 0
    fake = tmp_path / "vmrun"
    (tmp_path / "out").write_bytes(body)
    fake.write_text(f"#!/bin/sh\ncat '{tmp_path / 'out'}'\nexit {status}\n")
    fake.chmod(0o755)
    assert Vmrun(str(fake), "fusion").tools_state("/vms/a/a.vmx", timeout=30) == body.decode().strip()


# -- the simulator against the same captures ---------------------------------------------------
_FORMS = (
    (re.compile(r"(?:[A-Za-z]:\\|/)\S.*?\.vmx"), "<vmx>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>"),
    (re.compile(r"^(Total (?:running VMs|snapshots)): \d+$"), r"\1: <n>"),
)


def form(line: str) -> str:
    """A line with what differs between hosts (paths, addresses, counts) replaced by placeholders."""
    for pattern, placeholder in _FORMS:
        line = pattern.sub(placeholder, line)
    return line


@dataclass
class SimHost:
    vmrun: Path
    home: Path
    root: Path

    def run(self, *args: str, product: str = "ws") -> tuple[int, str]:
        proc = subprocess.run(
            [str(self.vmrun), "-T", product, *args], capture_output=True, text=True, timeout=60, check=False
        )
        return proc.returncode, proc.stdout

    def vm(self, name: str, tools: bool = True) -> str:
        directory = self.root / name
        directory.mkdir()
        disk = fake_vmdk(self.root / f"{name}.vmdk")
        vmx = directory / f"{name}.vmx"
        vmx.write_text(f'.encoding = "UTF-8"\ndisplayName = "{name}"\nscsi0:0.fileName = "{disk}"\n')
        load_simulator().set_profile(self.home, name, tools=tools)
        return str(vmx)

    def started(self, name: str, tools: bool = True) -> str:
        vmx = self.vm(name, tools)
        assert self.run("start", vmx, "nogui")[0] == 0
        if tools:
            sim = load_simulator()
            wait_until(lambda: sim.guest_view(self.home, Path(vmx))["ready"], 10, "the guest to boot")
        return vmx


@pytest.fixture
def sim_host(tmp_path: Path) -> Iterator[SimHost]:
    host = SimHost(make_vmrun(tmp_path / "bin", tmp_path / "home"), tmp_path / "home", tmp_path / "vms")
    host.root.mkdir()
    try:
        yield host
    finally:
        for proc in vmx_processes(str(tmp_path)):
            proc.kill()


def _list(host: SimHost, running: int) -> tuple[int, str]:
    for i in range(running):
        host.started(f"r{i}")
    return host.run("list")


#: The simulator command that stands for each capture's situation.
SCENARIOS: dict[str, Callable[[SimHost], tuple[int, str]]] = {
    "list-fusion10-macos-none.txt": lambda h: _list(h, 0),
    "list-fusion-macos-vagrant165-none.txt": lambda h: _list(h, 0),
    "list-fusion7-macos-three.txt": lambda h: _list(h, 3),
    "list-ws15-windows-one.txt": lambda h: _list(h, 1),
    "error-tools-getguestip-ws-linux.txt": lambda h: h.run("getGuestIPAddress", h.started("a", tools=False)),
    "error-tools-getguestip-fusion-macos.txt": lambda h: h.run("getGuestIPAddress", h.started("a", tools=False)),
    "error-not-powered-on-stop-ws-windows.txt": lambda h: h.run("stop", h.vm("a"), "hard"),
    "error-not-powered-on-getguestip-fusion-nogui.txt": lambda h: h.run("getGuestIPAddress", h.vm("a")),
    "error-not-supported-snapshot-player-linux.txt": lambda h: h.run("snapshot", h.vm("a"), "s", product="player"),
    "tools-unknown-fusion12-macos.txt": lambda h: h.run("checkToolsState", h.vm("a")),
    "tools-installed-fusion-nogui.txt": lambda h: h.run("checkToolsState", h.started("a", tools=False)),
}
#: Captures of situations the simulator does not produce (a broken install, a VMX that failed).
NOT_SIMULATED = {
    "error-cannot-connect-vm-fusion-start.txt",
    "error-cannot-read-config-fusion-start.txt",
    "error-service-not-installed-ws12-windows.txt",
    "error-tools-getguestip-fusion-nopath.txt",  # typed by the reporter without the path vmrun logs print
    "error-unable-to-connect-ws-windows.txt",
    "error-unknown-error-fusion10-start.txt",
    "error-version-not-found-player15-windows.txt",
}


def test_every_vmrun_capture_is_simulated_or_said_not_to_be() -> None:
    vmrun_kinds = ("vmrun-list", "vmrun-error", "vmrun-tools-state")
    assert sorted(SCENARIOS.keys() | NOT_SIMULATED) == realworld_samples(*vmrun_kinds)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_simulator_prints_each_line_in_the_captured_form(name: str, sim_host: SimHost) -> None:
    header, body = realworld_sample(name)
    status, out = SCENARIOS[name](sim_host)
    captured = [form(line) for line in body.decode().splitlines()]
    simulated = [form(line) for line in out.splitlines()]
    assert simulated == captured or (set(simulated) == set(captured) and len(simulated) > 1), (simulated, captured)
    expected = header["exit"]
    if expected.isdigit():
        assert status == exit_status(header)
    elif expected.startswith("non-zero"):
        assert status != 0
