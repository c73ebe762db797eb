"""The guest's network on QEMU (issue 13, attacks 4 and 10): a guest cannot reach the host's
loopback through its gateway, port forwards still work on 127.0.0.1, the passt process that
carries the network never outlives its QEMU, and a forwarded port another process took is a
typed refusal."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl.backend.ports import free_port
from vmctl.testguest import TestGuest, ensure_test_guest

pytestmark = pytest.mark.slow

PROBE_SH = """\
i=0
while ! ip route | grep -q default && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
gw=$(ip route | awk '/default/ {{print $3; exit}}')
for addr in 10.0.2.2 $gw; do
    if nc -w 3 $addr {port} </dev/null >/dev/null 2>&1; then r=open; else r=closed; fi
    echo "VMCTL-PROBE $addr:{port} $r"
done
echo "VMCTL-PROBE done"
"""


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A service only the host's loopback should reach (as BOINC's GUI RPC port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s


def _wait_for(log: Path, text: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while text not in (data := log.read_bytes() if log.exists() else b""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the console"
        time.sleep(0.1)
    return data


def _echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping")
        return s.recv(4)


def _passt_of(port: int) -> psutil.Process:
    for conn in psutil.net_connections(kind="tcp4"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nobody listens on {port}")


def _spec(guest: TestGuest, tmp_path: Path, port: int, script: str) -> vmctl.MachineSpec:
    share = tmp_path / "share"
    share.mkdir()
    (share / "run.sh").write_text(script)
    return vmctl.MachineSpec(
        name="net",
        kernel=guest.kernel,
        initrd=guest.initrd,
        cmdline=guest.cmdline + " vmctl.share=job",
        memory_mib=128,
        serial_log=tmp_path / "console.log",
        network=vmctl.Network(port_forwards=[vmctl.PortForward(host_port=port, guest_port=22)]),
        shared_dirs={"job": share},
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("passt", ["passt", ""], ids=["passt", "restricted-slirp"])
def test_the_guest_cannot_reach_host_loopback_but_forwards_work(
    tmp_path: Path, guest: TestGuest, listener: socket.socket, passt: str
) -> None:
    target = listener.getsockname()[1]
    port = free_port()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg", passt=passt)
    vm = hv.create(_spec(guest, tmp_path, port, PROBE_SH.format(port=target)))
    try:
        vm.start()
        log, deadline = tmp_path / "console.log", time.monotonic() + 200
        while b"VMCTL-PROBE done" not in (console := log.read_bytes() if log.exists() else b""):
            assert time.monotonic() < deadline, "the guest's probe never finished"
            with pytest.raises(BlockingIOError):
                listener.accept()[0].close()
                pytest.fail("the guest reached a service on the host's loopback")
            time.sleep(0.1)
        assert _echo(port) == b"ping", "the port forward to the guest works"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came through the gateway
        assert f"10.0.2.2:{target} closed".encode() in console
        assert b" open" not in console, console.decode(errors="replace")[-2000:]
    finally:
        vm.destroy()


@pytest.mark.timeout(300)
def test_passt_never_outlives_its_qemu(tmp_path: Path, guest: TestGuest) -> None:
    port = free_port()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, tmp_path, port, "true\n"))
    try:
        vm.start()
        passt = _passt_of(port)
        assert "passt" in passt.name()
        run = json.loads((tmp_path / "state" / "net" / "run.json").read_text())
        psutil.Process(run["qemu_pid"]).kill()  # a crash of QEMU
        passt.wait(timeout=20)
        vm.start()  # a new run gets a new passt; destroy ends it
        again = _passt_of(port)
        vm.destroy()
        again.wait(timeout=20)
    finally:
        if vm.name in [m.name for m in hv.machines()]:
            vm.destroy()


def test_a_forwarded_port_taken_by_another_process_is_a_typed_refusal(tmp_path: Path, guest: TestGuest) -> None:
    port = free_port()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(_spec(guest, tmp_path, port, "true\n"))
    try:
        with socket.socket() as thief:  # another process took the port between pick and start
            thief.bind(("127.0.0.1", port))
            thief.listen(1)
            with pytest.raises(vmctl.BackendError) as err:
                vm.start()
            assert err.value.native == "EADDRINUSE"
            assert vm.state == vmctl.State.STOPPED
        vm.start()  # the port free again, the same machine starts
        assert vm.state == vmctl.State.RUNNING
    finally:
        vm.destroy()
