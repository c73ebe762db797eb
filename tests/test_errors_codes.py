"""``BackendError.code`` speaks one vocabulary on every backend, mapped from the backend's real errors.

libvirt errors are provoked on the in-process ``test:///default`` driver, QMP errors on a real
QEMU without a guest (``-machine none``), VirtualBox errors are the simulator's rendering of
VBoxManage's output, vmrun errors come from the vmrun simulator, vSphere faults are pyvmomi's
fault classes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import State
from vmctl.errors import TRANSIENT_CODES, BackendError, ErrorCode
from vmctl.tools import run_tool


# -- the vocabulary itself ---------------------------------------------------------------------------
def test_a_native_string_is_kept_and_the_code_is_unknown() -> None:
    err = BackendError("x", code="VIR_ERR_SOMETHING")
    assert err.code is ErrorCode.UNKNOWN and err.native == "VIR_ERR_SOMETHING" and not err.transient


def test_a_vocabulary_string_becomes_the_member() -> None:
    err = BackendError("x", code="busy")
    assert err.code is ErrorCode.BUSY and err.native is None and err.transient


def test_transient_follows_the_code_unless_the_backend_knows_better() -> None:
    for code in ErrorCode:
        assert BackendError("x", code=code).transient is (code in TRANSIENT_CODES)
    assert not BackendError("x", code=ErrorCode.BUSY, transient=False).transient


def test_the_vocabulary_is_documented_on_the_errors_page() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "errors.md").read_text()
    block = page.split("<!-- error codes")[1].split("<!-- end error codes")[0]
    documented = {}
    for line in block.splitlines()[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2:
            documented[cells[0].strip("`")] = cells[1] == "yes"
    assert documented == {code.value: code in TRANSIENT_CODES for code in ErrorCode}


# -- tools run by every CLI-driven backend (qemu-img, VBoxManage, vmrun) --------------------------
def test_a_tool_that_cannot_run_says_why(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as caught:
        run_tool([str(tmp_path / "no-such-tool")], timeout=10)
    assert (caught.value.code, caught.value.native) == (ErrorCode.NOT_FOUND, "ENOENT")
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o600)  # no execute bit for anyone: even root gets EACCES
    with pytest.raises(BackendError) as caught:
        run_tool([str(script)], timeout=10)
    assert (caught.value.code, caught.value.native) == (ErrorCode.AUTH, "EACCES")


# -- libvirt -------------------------------------------------------------------------------------------
libvirt_error_cases: list[tuple[str, Callable[[Any], Any], ErrorCode, str]] = [
    ("lookup", lambda c: c.lookupByName("vmctl-no-such-domain"), ErrorCode.NOT_FOUND, "VIR_ERR_NO_DOMAIN"),
    ("pool", lambda c: c.storagePoolLookupByName("vmctl-no-pool"), ErrorCode.NOT_FOUND, "VIR_ERR_NO_STORAGE_POOL"),
    ("xml", lambda c: c.defineXML("<domain"), ErrorCode.INVALID_ARGUMENT, "VIR_ERR_XML_DETAIL"),
    ("arg", lambda c: c.lookupByName("test").setVcpus(0), ErrorCode.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG"),
    ("running", lambda c: c.lookupByName("test").create(), ErrorCode.INTERNAL, "VIR_ERR_INTERNAL_ERROR"),
    ("nosupport", lambda c: c.lookupByName("test").blockCommit("vda", None, None), ErrorCode.UNSUPPORTED,
     "VIR_ERR_NO_SUPPORT"),
    ("snapshot", lambda c: c.lookupByName("test").snapshotLookupByName("x"), ErrorCode.NOT_FOUND,
     "VIR_ERR_NO_DOMAIN_SNAPSHOT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "call", "code", "native"), libvirt_error_cases, ids=[c[0] for c in libvirt_error_cases]
)
def test_libvirt_errors(what: str, call: Callable[[Any], Any], code: ErrorCode, native: str) -> None:
    pytest.importorskip("libvirt")
    from vmctl_libvirt._connection import Connection

    conn = Connection("test:///default")
    try:
        with pytest.raises(BackendError) as caught:
            conn.call(what, call)
    finally:
        conn.close()
    assert (caught.value.code, caught.value.native, caught.value.transient) == (code, native, False)


def test_libvirt_unreachable_daemon_is_a_transient_connection_error(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    from vmctl_libvirt._connection import Connection

    with pytest.raises(BackendError) as caught:
        Connection(f"qemu+unix:///system?socket={tmp_path / 'no-daemon.sock'}")
    err = caught.value
    assert (err.code, err.native, err.transient) == (ErrorCode.CONNECTION, "VIR_ERR_SYSTEM_ERROR", True)


def test_libvirt_error_names_are_error_numbers_not_levels() -> None:
    libvirt = pytest.importorskip("libvirt")
    from vmctl_libvirt._errors import error_code, error_name

    # VIR_ERR_WARNING and VIR_ERR_ERROR are levels sharing the values 1 and 2
    assert error_name(libvirt.VIR_ERR_INTERNAL_ERROR) == "VIR_ERR_INTERNAL_ERROR"
    assert error_name(libvirt.VIR_ERR_NO_MEMORY) == "VIR_ERR_NO_MEMORY"
    assert error_code(libvirt.VIR_ERR_NO_MEMORY) is ErrorCode.RESOURCE


# -- QMP -----------------------------------------------------------------------------------------------
@pytest.fixture
def qemu_monitor(tmp_path: Path) -> Iterator[Path]:
    """A real QEMU with no guest; -daemonize returns once its QMP socket listens."""
    socket = tmp_path / "qmp.sock"
    pidfile = tmp_path / "qemu.pid"
    run_tool(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
         "-qmp", f"unix:{socket},server=on,wait=off", "-daemonize", "-pidfile", str(pidfile)],
        timeout=60,
    )  # fmt: skip
    pid = int(pidfile.read_text())
    try:
        yield socket
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("command", "arguments", "code", "native"),
    [
        ("vmctl-no-such-command", None, ErrorCode.UNSUPPORTED, "CommandNotFound"),
        ("device_del", {"id": "vmctl-nope"}, ErrorCode.NOT_FOUND, "DeviceNotFound"),
        ("query-status", {"bogus": 1}, ErrorCode.UNKNOWN, "GenericError"),
    ],
)
def test_qmp_error_classes(
    qemu_monitor: Path, command: str, arguments: dict[str, Any] | None, code: ErrorCode, native: str
) -> None:
    from vmctl_qemu._qmp import session

    with session(qemu_monitor) as qmp, pytest.raises(BackendError) as caught:
        qmp.execute(command, arguments)
    assert (caught.value.code, caught.value.native, caught.value.transient) == (code, native, False)


def test_qmp_monitor_unreachable_is_a_transient_connection_error(tmp_path: Path) -> None:
    from vmctl_qemu._qmp import session

    with pytest.raises(BackendError) as caught, session(tmp_path / "nobody.sock", timeout=5):
        pass
    assert caught.value.code is ErrorCode.CONNECTION and caught.value.transient


# -- VirtualBox -------------------------------------------------------------------------------------
VBOX_EXPECTED = {
    "VBOX_E_VM_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_FILE_ERROR": ErrorCode.IO,
    "VBOX_E_IPRT_ERROR": ErrorCode.INTERNAL,
    "VBOX_E_INVALID_OBJECT_STATE": ErrorCode.BUSY,
    "VBOX_E_OBJECT_IN_USE": ErrorCode.INVALID_STATE,
    "E_INVALIDARG": ErrorCode.INVALID_ARGUMENT,
    "E_FAIL": ErrorCode.UNKNOWN,
    "NS_ERROR_FAILURE": ErrorCode.UNKNOWN,  # E_FAIL as Linux and macOS hosts name it
}


def test_vboxmanage_errors_as_the_simulator_prints_them() -> None:
    from tests.contract.harness_virtualbox import load_simulator
    from vmctl_virtualbox._errors import is_transient, map_error, parse_error

    sim = load_simulator()
    # every code the simulator can print, except those mapped to a more precise error class
    simulated = set(sim.HRESULTS) - {"VBOX_E_OBJECT_NOT_FOUND", "VBOX_E_INVALID_VM_STATE"}
    assert simulated == set(VBOX_EXPECTED)
    for native, code in VBOX_EXPECTED.items():
        stderr = sim.VBoxError("it failed", native, context="Something()").render()
        info = parse_error(stderr)
        assert info is not None
        err = map_error(info, command=["VBoxManage", "x"], status=1, stderr=stderr)
        assert isinstance(err, BackendError)
        assert (err.code, err.native, err.transient) == (code, native, code in TRANSIENT_CODES), native
        assert err.transient is is_transient(info)
    # a lock reported without a code is told by its text
    locked = parse_error(sim.VBoxError("The machine 'm' is already locked for a session").render())
    assert locked is not None
    err = map_error(locked, command=["VBoxManage"], status=1)
    assert isinstance(err, BackendError) and err.code is ErrorCode.BUSY and err.transient


# -- vmrun ---------------------------------------------------------------------------------------------
@pytest.fixture
def vmrun(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    from tests.contract.harness_vmware import fake_vmdk, make_vmrun, vmx_processes

    tool = make_vmrun(tmp_path / "bin", tmp_path / "home")
    vmx = tmp_path / "vms" / "a" / "a.vmx"
    vmx.parent.mkdir(parents=True)
    disk = fake_vmdk(tmp_path / "disk.vmdk")
    vmx.write_text(f'.encoding = "UTF-8"\ndisplayName = "a"\nscsi0:0.fileName = "{disk}"\n')
    try:
        yield tool, vmx
    finally:
        for proc in vmx_processes(str(tmp_path)):
            proc.kill()


def test_vmrun_error_lines_from_the_simulator(vmrun: tuple[Path, Path]) -> None:
    from vmctl_vmware._errors import VmrunError, check_result

    tool, vmx = vmrun
    cases = [
        (["-T", "ws", "stop", str(vmx), "hard"], ErrorCode.INVALID_STATE, "not_running"),
        (["-T", "ws", "start", str(vmx.with_name("gone.vmx"))], ErrorCode.NOT_FOUND, "vm_not_found"),
        (["-T", "ws", "stop", str(vmx), "gently"], ErrorCode.INVALID_ARGUMENT, "invalid_argument"),
        (["-T", "player", "snapshot", str(vmx), "s1"], ErrorCode.UNSUPPORTED, "not_supported"),
        (["-T", "ws", "revertToSnapshot", str(vmx), "nope"], ErrorCode.NOT_FOUND, "snapshot_not_found"),
    ]
    for args, code, native in cases:
        argv = [str(tool), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        with pytest.raises(VmrunError) as caught:
            check_result(argv, proc.returncode, proc.stdout, proc.stderr)
        err = caught.value
        assert (err.code, err.native, err.transient) == (code, native, False), (args, proc.stdout)


# -- vSphere -------------------------------------------------------------------------------------------
def test_vsphere_faults_by_class() -> None:
    vim = pytest.importorskip("pyVmomi").vim
    vmodl = pytest.importorskip("pyVmomi").vmodl
    from vmctl_vsphere._faults import map_fault

    cases = [
        (vim.fault.FileLocked(file="[ds] a/a.vmdk"), ErrorCode.BUSY, "FileLocked"),
        (vim.fault.TaskInProgress(), ErrorCode.BUSY, "TaskInProgress"),
        (vim.fault.NoPermission(), ErrorCode.AUTH, "NoPermission"),
        (vim.fault.FileNotFound(file="[ds] x"), ErrorCode.NOT_FOUND, "FileNotFound"),
        (vim.fault.FileAlreadyExists(file="[ds] x"), ErrorCode.EXISTS, "FileAlreadyExists"),
        (vmodl.fault.InvalidArgument(invalidProperty="spec"), ErrorCode.INVALID_ARGUMENT, "InvalidArgument"),
        (vim.fault.InvalidDeviceSpec(), ErrorCode.INVALID_ARGUMENT, "InvalidDeviceSpec"),
        (vim.fault.NoDiskSpace(datastore="ds"), ErrorCode.RESOURCE, "NoDiskSpace"),
        (vim.fault.InsufficientResourcesFault(), ErrorCode.RESOURCE, "InsufficientResourcesFault"),
        (vim.fault.FileFault(file="[ds] x"), ErrorCode.IO, "FileFault"),
        (vim.fault.Timedout(), ErrorCode.TIMEOUT, "Timedout"),
        (vmodl.fault.HostNotConnected(), ErrorCode.CONNECTION, "HostNotConnected"),
        (vmodl.fault.SystemError(reason="boom"), ErrorCode.INTERNAL, "SystemError"),
        (vmodl.fault.RequestCanceled(), ErrorCode.UNKNOWN, "RequestCanceled"),
        (vim.fault.ToolsUnavailable(), ErrorCode.GUEST, "ToolsUnavailable"),
    ]
    for fault, code, native in cases:
        err = map_fault(fault, machine="m1", verb="start", state=lambda: State.STOPPED)
        assert isinstance(err, BackendError), native
        assert (err.code, err.native, err.transient) == (code, native, code in TRANSIENT_CODES), native


def test_a_state_fault_stays_a_typed_refusal() -> None:
    """The vocabulary is for BackendError only: a fault that means "not in that state" stays InvalidState."""
    vim = pytest.importorskip("pyVmomi").vim
    from vmctl_vsphere._faults import map_fault

    err = map_fault(vim.fault.InvalidPowerState(), machine="m1", verb="start", state=lambda: State.RUNNING)
    assert isinstance(err, vmctl.InvalidState)
