"""The vmware backend's parsers and writers, without vmrun: error lines, counted lists, .vmx files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmctl
from vmctl_vmware import _errors as E
from vmctl_vmware._errors import VmrunError, check_result, classify
from vmctl_vmware._machine import parse_count_list
from vmctl_vmware._vmx import VmxFile, apply_spec, new_vmx, vmx_escape, vmx_unescape

ARGV = ["/opt/vmrun", "-T", "ws", "stop", "/vms/a/a.vmx", "hard"]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("The virtual machine is not powered on: /vms/a/a.vmx", E.NOT_RUNNING),
        ("The virtual machine needs to be powered on", E.NOT_RUNNING),
        ("The VMware Tools are not running in the virtual machine: /vms/a/a.vmx", E.TOOLS_NOT_RUNNING),
        ("Cannot open VM: /vms/a/a.vmx, The virtual machine cannot be found", E.VM_NOT_FOUND),
        ("Cannot open VM: /vms/a/a, unknown file suffix", E.VM_NOT_FOUND),
        ("Cannot open VM: /vms/a/a.vmx, A password is required for this operation", E.ENCRYPTED),
        ("The virtual machine should not be powered on. It appears to be running already.", E.IS_RUNNING),
        ("A file by that name does not exist", E.SNAPSHOT_NOT_FOUND),
        ("The name does not uniquely identify one snapshot", E.SNAPSHOT_NOT_UNIQUE),
        ("The operation is not supported for the specified parameters", E.NOT_SUPPORTED),
        ("One of the parameters was invalid", E.INVALID_ARGUMENT),
        ("Insufficient permissions in host operating system", E.PERMISSION),
        ("The file already exists", E.ALREADY_EXISTS),
        ("The file is already in use", E.IN_USE),
        ("Unable to connect to host.", E.HOST_UNREACHABLE),
        ("The operation was cancelled", E.OTHER),
        # Real captures (tests/realworld/vmware): vmrun's preceding line is kept in the message.
        ("Unable to connect to host. The operation is not supported for the specified parameters", E.HOST_UNREACHABLE),
        (
            "Unable to connect to host. Service type VIX_SERVICEPROVIDER_VMWARE_WORKSTATION was specified,"
            " but not installed",
            E.PRODUCT_MISSING,
        ),
        ("Unable to connect to host. The specified version was not found", E.PRODUCT_MISSING),
        ("The operation is not supported", E.NOT_SUPPORTED),
        ("The virtual machine is not powered on", E.NOT_RUNNING),
        ("Cannot open VM: /v/owz.vmx, Cannot read the virtual machine configuration file", E.CONFIG_UNREADABLE),
    ],
)
def test_vix_messages_are_classified(message: str, kind: str) -> None:
    assert classify(message) == kind


def test_error_line_on_stdout_with_status_255() -> None:
    out = "Error: The virtual machine is not powered on: /vms/a/a.vmx\n"
    with pytest.raises(VmrunError) as err:
        check_result(ARGV, 255, out, "")
    exc = err.value
    assert isinstance(exc, vmctl.BackendError)
    assert exc.kind == E.NOT_RUNNING and exc.status == 255 and exc.stdout == out and exc.command == ARGV
    assert exc.vix_message == "The virtual machine is not powered on: /vms/a/a.vmx"


def test_error_line_with_status_0_is_still_an_error() -> None:
    with pytest.raises(VmrunError) as err:
        check_result(ARGV, 0, "Error: The operation was cancelled\n", "")
    assert err.value.kind == E.OTHER


def test_vmruns_own_log_lines_and_unable_to_connect_come_before_the_error_line() -> None:
    out = "2013-09-07T15:26:59.560| ServiceImpl_Opener: PID 4119\nError: Cannot connect to the virtual machine\n"
    for status in (0, 255):  # an Error: line after vmrun's log lines is a failure whatever the status
        with pytest.raises(VmrunError) as err:
            check_result(ARGV, status, out, "")
        assert err.value.vix_message == "Cannot connect to the virtual machine"
    out = "Unable to connect to host.\nError: The operation is not supported for the specified parameters\n"
    with pytest.raises(VmrunError) as err:
        check_result(ARGV, 255, out, "")
    assert err.value.kind == E.HOST_UNREACHABLE and err.value.code is vmctl.ErrorCode.CONNECTION


def test_non_zero_status_without_error_line() -> None:
    usage = "Invalid argument: -x\nvmrun version 1.17.0\nUsage: vmrun [AUTHENTICATION-FLAGS] COMMAND\n"
    with pytest.raises(VmrunError) as err:
        check_result(ARGV, 255, usage, "")
    assert err.value.vix_message == "Invalid argument: -x"
    with pytest.raises(VmrunError) as err:
        check_result(ARGV, 1, "", "")
    assert "no output" in err.value.vix_message


def test_success_output_is_returned_even_if_a_later_line_says_error() -> None:
    out = "Total snapshots: 2\nbefore\nError: a snapshot someone named so\n"
    assert check_result(ARGV, 0, out, "") == out
    assert parse_count_list(out, "Total snapshots") == ["before", "Error: a snapshot someone named so"]


def test_counted_lists() -> None:
    assert parse_count_list("Total running VMs: 0\n", "Total running VMs") == []
    text = "Total running VMs: 2\r\n/vms/a b/a b.vmx\r\n/vms/c/c.vmx\r\n"
    assert parse_count_list(text, "Total running VMs") == ["/vms/a b/a b.vmx", "/vms/c/c.vmx"]
    with pytest.raises(vmctl.BackendError, match="2 announced, 1 listed"):
        parse_count_list("Total running VMs: 2\n/vms/a/a.vmx\n", "Total running VMs")
    with pytest.raises(vmctl.BackendError, match="no 'Total running VMs' line"):
        parse_count_list("something else\n", "Total running VMs")


@given(st.text())
def test_vmx_values_round_trip_and_stay_on_one_line(value: str) -> None:
    escaped = vmx_escape(value)
    assert "\n" not in escaped and '"' not in escaped and "\r" not in escaped
    assert vmx_unescape(escaped) == value
    vmx = VmxFile.parse('.encoding = "UTF-8"\n')
    vmx.set("displayName", value)
    assert VmxFile.parse(vmx.render()).get("DISPLAYNAME") == value


def test_vmx_edit_keeps_other_lines_and_is_case_insensitive() -> None:
    vmx = VmxFile.parse('.encoding = "UTF-8"\n# a comment\nMemSize = "128"\nsharedFolder0.hostPath = "/x"\n')
    vmx.set("memsize", "512")
    vmx.remove_prefix("sharedfolder")
    assert vmx.render() == '.encoding = "UTF-8"\n# a comment\nMemSize = "512"\n'
    assert not vmx.is_encrypted()
    vmx.set("encryption.keySafe", "vmware:key/...")
    assert vmx.is_encrypted()


def test_spec_becomes_vmx_settings(tmp_path: Path) -> None:
    disk = tmp_path / "base.vmdk"
    disk.write_text("x")
    share = tmp_path / "share"
    share.mkdir()
    spec = vmctl.MachineSpec(
        name="job-1",
        disk=disk,
        memory_mib=512,
        cpus=2,
        network=vmctl.Network(),
        shared_dirs={"work": share},
        serial_log=tmp_path / "console.log",
    )
    vmx = new_vmx("job-1", disk)
    apply_spec(vmx, spec)
    expected = {
        "displayName": "job-1",
        "memsize": "512",
        "numvcpus": "2",
        "scsi0:0.fileName": str(disk),
        "serial0.fileType": "file",
        "serial0.fileName": str(tmp_path / "console.log"),
        "ethernet0.present": "TRUE",
        "ethernet0.connectionType": "nat",
        "ethernet0.startConnected": "TRUE",
        "sharedFolder0.hostPath": str(share),
        "sharedFolder0.guestName": "work",
        "sharedFolder0.writeAccess": "TRUE",
        "sharedFolder.maxNum": "1",
        "isolation.tools.hgfs.disable": "FALSE",
    }
    for key, value in expected.items():
        assert vmx.get(key) == value, key
    apply_spec(vmx, vmctl.MachineSpec(name="job-1", disk=disk))
    assert vmx.get("ethernet0.present") == "FALSE"
    assert vmx.get("serial0.fileName") is None and vmx.get("sharedFolder0.hostPath") is None
