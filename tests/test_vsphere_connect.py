"""Connecting to vSphere: credentials (never on a command line), TLS, login, timeouts, availability.

Runs against vcsim (tests/vcsim.py), built from Debian's govmomi sources.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.vcsim import Vcsim, build_vcsim, vcsim_fixture
from vmctl.backend.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-" + secrets.token_hex(8)

vcsim = vcsim_fixture(username="vmctl", password=PASSWORD)


def _cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


# -- the simulator helper ---------------------------------------------------------------------
def test_vcsim_build_is_cached() -> None:
    first = build_vcsim()
    mtime = first.stat().st_mtime_ns
    started = time.monotonic()
    again = build_vcsim()
    assert again == first and again.stat().st_mtime_ns == mtime
    assert time.monotonic() - started < 2, "a cached build must not compile again"


def test_vcsim_stops_and_leaves_nothing() -> None:
    server = Vcsim(vms=0)
    server.start()
    pid, root = server.pid, server.datastore_root
    assert pid is not None and root.is_dir()
    assert any(root.iterdir()), "vcsim keeps its datastores under its private TMPDIR"
    server.stop()
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_vcsim_listens_on_loopback_only(vcsim: Vcsim) -> None:
    assert vcsim.host == "127.0.0.1"
    conns = Path(f"/proc/{vcsim.pid}/net/tcp").read_text().splitlines()[1:]
    listening = [c.split()[1] for c in conns if c.split()[3] == "0A"]
    assert f"0100007F:{vcsim.port:04X}" in listening


# -- credentials ------------------------------------------------------------------------------
def test_password_from_argument_env_and_file(vcsim: Vcsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vcsim.connect(password=PASSWORD).close()
    monkeypatch.setenv("MY_VC_PASSWORD", PASSWORD)
    vcsim.connect(password_env="MY_VC_PASSWORD").close()  # noqa: S106 - not a secret
    monkeypatch.setenv("VMCTL_VSPHERE_PASSWORD", PASSWORD)
    vcsim.connect(password_env=None).close()  # the default variable
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    vcsim.connect(password_file=secret).close()


def test_password_sources_are_checked(vcsim: Vcsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMCTL_VSPHERE_PASSWORD", raising=False)
    with pytest.raises(vmctl.InvalidSpec, match="VMCTL_VSPHERE_PASSWORD"):
        vmctl.connect("vsphere", host=vcsim.host, port=vcsim.port, user="vmctl", ca_file=vcsim.cert_file)
    with pytest.raises(vmctl.InvalidSpec, match="only one"):
        vcsim.connect(password=PASSWORD, password_env="X")  # noqa: S106 - not a secret
    with pytest.raises(vmctl.InvalidSpec, match="password_file"):
        vcsim.connect(password_file=tmp_path / "missing")
    with pytest.raises(vmctl.InvalidSpec, match="NO_SUCH_VAR"):
        vcsim.connect(password_env="NO_SUCH_VAR")  # noqa: S106 - not a secret


def test_wrong_password_is_a_login_error(vcsim: Vcsim) -> None:
    with pytest.raises(vmctl.BackendError) as err:
        vcsim.connect(password="wrong")  # noqa: S106 - not a secret
    assert err.value.code == "auth" and err.value.native == "InvalidLogin"
    assert "wrong" not in str(err.value)


def test_world_readable_password_file_warns(vcsim: Vcsim, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o644)
    vcsim.connect(password_file=secret).close()
    assert "readable by other users" in caplog.text
    assert PASSWORD not in caplog.text


def test_password_is_on_no_command_line(vcsim: Vcsim, tmp_path: Path) -> None:
    """Neither vcsim nor a process driving vmctl ever has the password in its argv."""
    assert PASSWORD.encode() not in Path(f"/proc/{vcsim.pid}/cmdline").read_bytes()
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    code = (
        "import sys, vmctl\n"
        f"hv = vmctl.connect('vsphere', host={vcsim.host!r}, port={vcsim.port}, user='vmctl', "
        f"password_file={str(secret)!r}, ca_file={str(vcsim.cert_file)!r})\n"
        "print(len(hv.machines()), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip().isdigit(), "the child did not connect"
        leaks = [pid for pid, cmd in _cmdlines().items() if PASSWORD.encode() in cmd]
        assert leaks == []
    finally:
        proc.kill()
        proc.wait()


# -- TLS and the endpoint ---------------------------------------------------------------------
def test_untrusted_certificate_is_refused_with_a_hint(vcsim: Vcsim) -> None:
    with pytest.raises(vmctl.BackendError) as err:
        vmctl.connect("vsphere", host=vcsim.host, port=vcsim.port, user="vmctl", password=PASSWORD)
    assert err.value.code == "auth" and err.value.native == "certificate"
    assert "ca_file=" in str(err.value)


def test_verify_tls_false_connects_with_a_warning(vcsim: Vcsim, caplog: pytest.LogCaptureFixture) -> None:
    hv = vmctl.connect("vsphere", host=vcsim.host, port=vcsim.port, user="vmctl", password=PASSWORD, verify_tls=False)
    hv.close()
    assert "not verifying" in caplog.text


def test_bad_options_are_invalid_spec(vcsim: Vcsim) -> None:
    with pytest.raises(vmctl.InvalidSpec):
        vcsim.connect(hots="x")
    with pytest.raises(vmctl.InvalidSpec):
        vcsim.connect(host="https://example.org/sdk")
    with pytest.raises(vmctl.InvalidSpec):
        vcsim.connect(port=0)
    with pytest.raises(vmctl.InvalidSpec, match="datacenter"):
        vcsim.connect(datacenter="nope")


def test_closed_port_is_a_connection_error() -> None:
    port = free_port()  # nobody listens there
    with pytest.raises(vmctl.BackendError) as err:
        vmctl.connect("vsphere", host="127.0.0.1", port=port, user="u", password="p", verify_tls=False, timeout=5)  # noqa: S106 - not a secret
    assert err.value.code == "connection"


def test_expired_session_is_renewed(vcsim: Vcsim) -> None:
    hv = vcsim.connect()
    try:
        hv.session.content.sessionManager.Logout()  # type: ignore[attr-defined]
        assert isinstance(hv.machines(), list)  # logs in again and repeats the call
    finally:
        hv.close()


# -- availability -----------------------------------------------------------------------------
def test_missing_pyvmomi_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['pyVmomi'] = None\n"
        "sys.modules['pyVim'] = None\n"
        "import vmctl\n"
        "info = {b.name: b for b in vmctl.backends()}['vsphere']\n"
        "print(info.usable, info.hint)\n"
        "try:\n"
        "    vmctl.connect('vsphere', host='h', user='u', password='p')\n"
        "except vmctl.BackendUnavailable as exc:\n"
        "    print('unavailable', exc.hint)\n"
        "from vmctl_vsphere import provider\n"
        "try:\n"
        "    provider.open(host='h', user='u', password='p')\n"
        "except vmctl.BackendUnavailable as exc:\n"
        "    print('open', exc.hint)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "False pip install vmctl[vsphere]",
        "unavailable pip install vmctl[vsphere]",
        "open pip install vmctl[vsphere]",
    ]


def test_backend_module_imports_no_pyvmomi() -> None:
    code = "import sys, vmctl_vsphere; print('pyVmomi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


# -- timeouts on calls --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_vcsim() -> Iterator[Vcsim]:
    with Vcsim(vms=1, delays={"PowerOnVM_Task": 3000}) as server:
        yield server


def test_every_call_has_a_timeout(slow_vcsim: Vcsim) -> None:
    hv = slow_vcsim.connect(timeout=1)
    try:
        vm = hv.machine("DC0_H0_VM0")
        vm.poweroff()
        started = time.monotonic()
        with pytest.raises(vmctl.OperationTimeout):
            vm.start()
        assert time.monotonic() - started < 2.5
    finally:
        hv.close()
