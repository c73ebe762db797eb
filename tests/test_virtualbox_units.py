"""Unit tests of the VirtualBox backend's parsing, error mapping, command running and transport
selection (no simulator: fake executables and fixed texts)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import vmctl
from vmctl import State
from vmctl_virtualbox._errors import error_code, is_transient, map_error, parse_error
from vmctl_virtualbox._machine import ONLINE, STATE_MAP, TRANSITIONAL
from vmctl_virtualbox._parse import (
    parse_extradata_enumerate,
    parse_extradata_value,
    parse_log_pid,
    parse_machinereadable,
    parse_metrics,
    parse_snapshot_list,
    parse_vm_list,
)
from vmctl_virtualbox._vboxmanage import VBoxManageTransport

#: Every short state name VBoxManage 7 prints (VBoxManageInfo.cpp, machineStateToName).
VBOX_STATES = [
    "poweroff", "saved", "teleported", "aborted", "aborted-saved", "running", "paused", "gurumeditation",
    "teleporting", "livesnapshotting", "starting", "stopping", "saving", "restoring", "teleportingpausedvm",
    "teleportingin", "deletingsnapshotlive", "deletingsnapshotlivepaused", "onlinesnapshotting",
    "restoringsnapshot", "deletingsnapshot", "settingup", "snapshotting",
]  # fmt: skip


def test_every_virtualbox_state_is_mapped_or_transitional() -> None:
    for name in VBOX_STATES:
        assert (name in STATE_MAP) != (name in TRANSITIONAL), name
    assert STATE_MAP["poweroff"] is State.STOPPED
    assert STATE_MAP["aborted"] is State.CRASHED
    assert STATE_MAP["saved"] is State.SUSPENDED
    assert STATE_MAP["running"] is State.RUNNING
    assert STATE_MAP["paused"] is State.PAUSED
    assert {"starting", "stopping", "saving", "restoring"} <= TRANSITIONAL
    assert {"running", "paused", "starting", "stopping", "saving", "restoring"} <= ONLINE
    assert not ({"poweroff", "saved", "aborted", "aborted-saved", "teleported"} & ONLINE)


def test_machinereadable_parsing() -> None:
    text = (
        'name="vm \\"one\\""\n'
        "memory=256\n"
        '"SATA-0-0"="/vms/a b/{x}.vdi"\n'
        '"SATA-ImageUUID-0-0"="0f5c7a46-0000-4000-8000-000000000001"\n'
        'description="first line\nsecond \\\\ line"\n'
        "VRDEClients==0\n"
        'Forwarding(0)="tcp2222,tcp,127.0.0.1,2222,,22"\n'
        "not a pair\n"
        'VMState="running"\n'
    )
    info = parse_machinereadable(text)
    assert info["name"] == 'vm "one"'
    assert info["memory"] == "256"
    assert info["SATA-0-0"] == "/vms/a b/{x}.vdi"
    assert info["description"] == "first line\nsecond \\ line"
    assert info["VRDEClients"] == "0"
    assert info["Forwarding(0)"] == "tcp2222,tcp,127.0.0.1,2222,,22"
    assert info["VMState"] == "running"


def test_snapshot_tree_parsing_keeps_parents_and_current() -> None:
    text = (
        'SnapshotName="base"\nSnapshotUUID="00000000-0000-4000-8000-000000000001"\n'
        'SnapshotName-1="left"\nSnapshotUUID-1="00000000-0000-4000-8000-000000000002"\n'
        'SnapshotDescription-1="d"\n'
        'SnapshotName-1-1="leaf"\nSnapshotUUID-1-1="00000000-0000-4000-8000-000000000003"\n'
        'CurrentSnapshotName="leaf"\nCurrentSnapshotUUID="00000000-0000-4000-8000-000000000003"\n'
        'CurrentSnapshotNode="SnapshotName-1-1"\n'
        'SnapshotName-2="right"\nSnapshotUUID-2="00000000-0000-4000-8000-000000000004"\n'
    )
    nodes = {n.name: n for n in parse_snapshot_list(text)}
    assert nodes["base"].parent_uuid is None
    assert nodes["left"].parent_uuid == nodes["base"].uuid and nodes["left"].description == "d"
    assert nodes["leaf"].parent_uuid == nodes["left"].uuid and nodes["leaf"].current
    assert nodes["right"].parent_uuid == nodes["base"].uuid
    assert [n.name for n in parse_snapshot_list(text)] == ["base", "left", "leaf", "right"]
    assert parse_snapshot_list("This machine does not have any snapshots\n") == []


def test_lists_extradata_metrics_and_log() -> None:
    assert parse_vm_list('"a" {0F5C7A46-0000-4000-8000-000000000001}\n<inaccessible> junk\n') == {
        "a": "0f5c7a46-0000-4000-8000-000000000001"
    }
    assert parse_extradata_value('Value: {"x":1}\n') == '{"x":1}'
    assert parse_extradata_value("No value set!\n") is None
    assert parse_extradata_enumerate("Key: a/b, Value: 1\nKey: c, Value: x, y\n") == {"a/b": "1", "c": "x, y"}
    table = (
        "Object          Metric                                   Values\n"
        "--------------- ---------------------------------------- ---------------\n"
        "vm1             CPU/Load/User                            1.50%, 2.25%\n"
        "vm1             RAM/Usage/Used                           262144 kB\n"
    )
    assert parse_metrics(table) == {"vm1": {"CPU/Load/User": (2.25, "%"), "RAM/Usage/Used": (262144.0, "kB")}}
    assert (
        parse_log_pid("00:00:00.000000 Executable: /usr/lib/virtualbox/VBoxHeadless\n00:00:00.0 Process ID: 4242\n")
        == 4242
    )


def test_error_parsing_and_mapping() -> None:
    assert parse_error("0%...10%...100%\n") is None, "progress on stderr is not an error"
    stderr = (
        "VBoxManage: error: The machine 'm' is already locked by a session (or being locked or unlocked)\n"
        "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, "
        "interface IMachine, callee nsISupports\n"
        'VBoxManage: error: Context: "LaunchVMProcess(...)" at line 727 of file VBoxManageMisc.cpp\n'
    )
    info = parse_error(stderr)
    assert info is not None and info.code == "VBOX_E_INVALID_OBJECT_STATE" and info.hresult == 0x80BB0007
    assert info.context is not None and info.context.startswith('"LaunchVMProcess')
    assert is_transient(info)
    plain = parse_error("VBoxManage.exe: error: Machine 'm' is not currently running.\n")
    assert plain is not None and plain.code is None and not is_transient(plain)
    assert isinstance(map_error(plain, command=["x"], status=1, machine="m"), vmctl.InvalidState)
    # controlvm savestate while another caller stops the machine (found by bench_stress --seconds 300).
    # VirtualBox's VBoxManageControlVM.cpp prints RTMsgError("Machine in invalid state %d -- %s.",
    # machineState, machineStateToName(machineState, false)): the MachineState number, the long name.
    for line in ("Machine in invalid state 12 -- stopping.", "Machine in invalid state 8 -- guru meditation"):
        stopping = parse_error(f"VBoxManage: error: {line}\n")
        assert stopping is not None
        assert isinstance(map_error(stopping, command=["controlvm"], status=1, machine="m"), vmctl.InvalidState)
    nf = parse_error(
        "VBoxManage: error: Could not find a registered machine named 'zz'\n"
        "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap\n"
    )
    assert nf is not None
    err = map_error(nf, command=["showvminfo", "zz"], status=1, machine="zz")
    assert isinstance(err, vmctl.MachineNotFound) and err.name == "zz"
    other = parse_error("VBoxManage: error: Details: code VBOX_E_FILE_ERROR (0x80bb0004), component Medium\n")
    assert other is not None
    berr = map_error(other, command=["storageattach"], status=1, stderr="text")
    assert (
        isinstance(berr, vmctl.BackendError)
        and berr.code == "io"
        and berr.native == "VBOX_E_FILE_ERROR"
        and berr.stderr == "text"
    )


def fake_tool(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "VBoxManage"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_commands_are_argv_lists_with_a_utf8_c_locale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record"
    tool = fake_tool(
        tmp_path,
        f'echo "LANG=$LANG LC_ALL=$LC_ALL LANGUAGE=$LANGUAGE" > "{record}"\n'
        f'for a in "$@"; do echo "[$a]" >> "{record}"; done\n',
    )
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de")
    t = VBoxManageTransport(str(tool))
    t.set_extradata("vm", "k", "a b; $(rm -rf /) 'q'")
    lines = record.read_text().splitlines()
    # A UTF-8 C locale: VirtualBox 7.0 prints nothing under LANG=C (hashicorp/vagrant#13145).
    assert lines[0] == "LANG=C.UTF-8 LC_ALL=C.UTF-8 LANGUAGE=C.UTF-8"
    assert lines[1:] == ["[-q]", "[setextradata]", "[vm]", "[k]", "[a b; $(rm -rf /) 'q']"]


def test_every_call_has_a_timeout(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "exec sleep 30\n")
    t = VBoxManageTransport(str(tool), timeout=0.5)
    with pytest.raises(vmctl.OperationTimeout):
        t.list_vms()


def test_unrecognised_failure_is_a_backend_error_with_the_output(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, 'echo "something odd" >&2\nexit 3\n')
    with pytest.raises(vmctl.BackendError) as err:
        VBoxManageTransport(str(tool)).list_vms()
    assert err.value.status == 3 and "something odd" in err.value.stderr
    assert err.value.command == [str(tool), "-q", "list", "vms"]


def test_backend_unavailable_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("VBOX_MSI_INSTALL_PATH", raising=False)
    monkeypatch.delenv("VBOX_INSTALL_PATH", raising=False)
    with pytest.raises(vmctl.BackendUnavailable, match="VBoxManage") as err:
        vmctl.connect("virtualbox")
    assert err.value.hint and "virtualbox.org" in err.value.hint
    with pytest.raises(vmctl.BackendUnavailable, match="does not work"):
        vmctl.connect("virtualbox", vboxmanage=str(tmp_path / "missing"))
    with pytest.raises(vmctl.BackendUnavailable, match="vboxapi"):
        vmctl.connect("virtualbox", transport="vboxapi")
    with pytest.raises(vmctl.InvalidSpec):
        vmctl.connect("virtualbox", vboxmanage=str(tmp_path / "x"), transport="soap")


def test_auto_uses_vboxapi_only_when_it_reaches_virtualbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selection logic only: the vboxapi transport itself cannot be exercised here."""
    tool = fake_tool(tmp_path, 'echo "7.0.20r163906"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}")

    broken = types.ModuleType("vboxapi")

    def unreachable(*_a: object) -> None:
        raise RuntimeError("could not connect to VBoxSVC")

    broken.VirtualBoxManager = unreachable  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vboxapi", broken)
    hv = vmctl.connect("virtualbox", base_folder=str(tmp_path / "vms"))
    assert hv.transport.name == "vboxmanage"  # type: ignore[attr-defined]
    assert hv.transport.executable == str(tool)  # type: ignore[attr-defined]

    class FakeManager:
        constants = types.SimpleNamespace(MachineState_PoweredOff=1, MachineState_Running=5)

        def __init__(self, *_a: object) -> None:
            pass

        def getVirtualBox(self) -> object:
            return types.SimpleNamespace(version="7.0.20")

    working = types.ModuleType("vboxapi")
    working.VirtualBoxManager = FakeManager  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vboxapi", working)
    hv = vmctl.connect("virtualbox", base_folder=str(tmp_path / "vms"))
    assert hv.transport.name == "vboxapi"  # type: ignore[attr-defined]
    pinned = vmctl.connect("virtualbox", vboxmanage=str(tool), base_folder=str(tmp_path / "vms"))
    assert pinned.transport.name == "vboxmanage"  # type: ignore[attr-defined]


def test_not_found_is_told_by_the_message_form_not_by_a_word() -> None:
    """A machine named snapshot-runner that is not found is a missing machine (issue 18)."""
    details = "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap\n"
    machine = parse_error("VBoxManage: error: Could not find a registered machine named 'snapshot-runner'\n" + details)
    assert machine is not None
    err = map_error(machine, command=["snapshot", "snapshot-runner", "list"], status=1, machine="snapshot-runner")
    assert isinstance(err, vmctl.MachineNotFound) and err.name == "snapshot-runner"
    by_uuid = parse_error(
        "VBoxManage: error: Could not find a registered machine with UUID {0f5c7a46-0000-4000-8000-000000000001}\n"
        + details
    )
    assert by_uuid is not None
    assert isinstance(map_error(by_uuid, command=["x"], status=1, machine="m"), vmctl.MachineNotFound)
    snap = parse_error("VBoxManage: error: Could not find a snapshot named 'machine-base'\n" + details)
    assert snap is not None
    serr = map_error(snap, command=["snapshot", "m", "restore", "machine-base"], status=1, machine="m")
    assert isinstance(serr, vmctl.SnapshotNotFound)
    medium = parse_error(
        "VBoxManage: error: Could not find file for the medium '/snapshots/x.vdi' (VERR_FILE_NOT_FOUND)\n"
        "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component MediumWrap\n"
    )
    assert medium is not None
    merr = map_error(medium, command=["storageattach"], status=1, machine="m")
    assert type(merr) is vmctl.BackendError and merr.code == "not_found"
    # XPCOM hosts print NS_ERROR_* names: the same codes as the COM ones.
    ns = parse_error("VBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component MachineWrap\n")
    assert ns is not None and error_code(ns) == vmctl.ErrorCode.UNKNOWN
    call = parse_error("VBoxManage: error: Details: code NS_ERROR_CALL_FAILED (0x800706be), component x\n")
    assert call is not None and error_code(call) == vmctl.ErrorCode.CONNECTION


def test_snapshot_values_are_read_unescaped_one_line_each() -> None:
    """showSnapshots prints names and descriptions with a plain printf (issue 18)."""
    text = (
        'SnapshotName="a\\"\nSnapshotUUID="00000000-0000-4000-8000-000000000001"\n'
        'SnapshotDescription="ends in a backslash \\"\n'
        'SnapshotName-1="say "hi""\nSnapshotUUID-1="00000000-0000-4000-8000-000000000002"\n'
        'SnapshotDescription-1="\\\\server\\share"\n'
        'SnapshotName-1-1="c"\nSnapshotUUID-1-1="00000000-0000-4000-8000-000000000003"\n'
        'SnapshotDescription-1-1="first line\nSnapshotName-9="not a snapshot""\n'
        'CurrentSnapshotName="c"\nCurrentSnapshotUUID="00000000-0000-4000-8000-000000000003"\n'
    )
    nodes = parse_snapshot_list(text)
    assert [n.uuid[-1] for n in nodes] == ["1", "2", "3"]
    assert nodes[0].name == "a\\" and nodes[0].description == "ends in a backslash \\"
    assert nodes[1].name == 'say "hi"' and nodes[1].description == "\\\\server\\share"
    assert nodes[2].description == "first line" and nodes[2].current
    assert parse_snapshot_list("This machine does not have any snapshots\n") == []


def test_running_machine_lines_that_are_not_key_value() -> None:
    """VideoMode="720,400,0"@0,0 1 (VirtualBox 5-7, running machines) stays on its line."""
    text = (
        'SessionName="headless"\nVideoMode="720,400,0"@0,0 1\nvrde="off"\n'
        "GuestAdditionsFacility_VirtualBox Base Driver=50,1458910695598\n"
        'description="two\nlines"\nname="x"\r\n'
    )
    info = parse_machinereadable(text)
    assert info["VideoMode"] == "720,400,0" and info["vrde"] == "off" and info["SessionName"] == "headless"
    assert info["GuestAdditionsFacility_VirtualBox Base Driver"] == "50,1458910695598"
    assert info["description"] == "two\nlines" and info["name"] == "x"


def test_version_with_the_kernel_module_warning_refuses_to_connect(tmp_path: Path) -> None:
    warning = (
        "WARNING: The vboxdrv kernel module is not loaded. Either there is no module\n"
        "         available for the current kernel (5.0.0-27-generic) or it failed to\n"
        "         load. Please recompile the kernel module and install it by\n\n"
        "           sudo /sbin/vboxconfig\n\n"
        "         You will not be able to start VMs until this problem is fixed.\n"
    )
    tool = fake_tool(tmp_path, f"cat <<'EOF'\n{warning}6.0.12r133076\nEOF\n")
    with pytest.raises(vmctl.BackendUnavailable, match="not properly set up") as err:
        vmctl.connect("virtualbox", vboxmanage=str(tool), base_folder=str(tmp_path / "vms"))
    assert "vboxdrv kernel module is not loaded" in str(err.value) and "vboxconfig" in (err.value.hint or "")


def test_nothing_printed_where_output_is_required_is_a_protocol_error(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, 'case "$2" in --version) echo 7.0.8r156879;; esac\nexit 0\n')
    t = VBoxManageTransport(str(tool))
    for call in (lambda: t.info("vm"), t.list_vms, lambda: t.snapshot_list("vm"), lambda: t.get_extradata("vm", "k")):
        with pytest.raises(vmctl.BackendError, match="printed nothing") as err:
            call()
        assert err.value.code == "protocol" and err.value.native == "VBOXMANAGE_NO_OUTPUT"
    assert t.version() == "7.0.8r156879"


def test_output_is_decoded_as_strict_utf8(tmp_path: Path) -> None:
    good = fake_tool(tmp_path, "printf '\"Programaci\\303\\263n\" {0f5c7a46-0000-4000-8000-000000000001}\\n'\n")
    assert list(VBoxManageTransport(str(good)).list_vms()) == ["Programación"]
    bad = fake_tool(tmp_path, "printf '\"Programaci\\363n\" {0f5c7a46-0000-4000-8000-000000000001}\\n'\n")
    with pytest.raises(vmctl.BackendError, match="not UTF-8") as err:
        VBoxManageTransport(str(bad)).list_vms()
    assert err.value.code == "protocol"
