"""``MachineSpec.remote_desktop`` on real QEMU (TCG): a VNC server on loopback at a free port
QEMU picks at each start, reported by ``remote_desktop_address()`` (issue 14: the BOINC
Manager's "Show VM Console" button)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psutil
import pytest

import vmctl
from vmctl_memory import MemoryHypervisor

from .qemu_machines import guest_machine


def rfb_banner(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        return s.recv(12)


def listeners(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr
    }


def test_two_machines_serve_vnc_on_distinct_loopback_ports(tmp_path: Path) -> None:
    with (
        guest_machine(tmp_path / "a", "rd-a", remote_desktop=True) as a,
        guest_machine(tmp_path / "b", "rd-b", remote_desktop=True) as b,
    ):
        assert a.remote_desktop_address() is None, "nothing listens while stopped"
        a.start()
        b.start()
        addr_a, addr_b = a.remote_desktop_address(), b.remote_desktop_address()
        assert addr_a and addr_b and addr_a != addr_b
        for machine, address in ((a, addr_a), (b, addr_b)):
            assert address.startswith("127.0.0.1:")
            assert rfb_banner(address).startswith(b"RFB 003."), "a VNC server answers"
            assert machine.pid is not None
            assert ("127.0.0.1", int(address.rsplit(":", 1)[1])) in listeners(machine.pid), "QEMU, on loopback"
            assert {ip for ip, _ in listeners(machine.pid)} == {"127.0.0.1"}, "nothing on other interfaces"
        a.suspend()
        assert a.remote_desktop_address() is None
        a.start()
        restored = a.remote_desktop_address()
        assert restored is not None and rfb_banner(restored).startswith(b"RFB 003."), "back after a restore"


def test_a_machine_without_remote_desktop_serves_none(tmp_path: Path) -> None:
    with guest_machine(tmp_path, "rd-none") as m:
        m.start()
        assert m.remote_desktop_address() is None
        assert m.pid is not None and listeners(m.pid) == set()
        assert "remote_desktop" not in m.spec.to_dict()


def test_a_backend_without_remote_desktop_refuses_the_spec(tmp_path: Path) -> None:
    hv = MemoryHypervisor(namespace=f"rd-{uuid.uuid4().hex}")
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(vmctl.Unsupported):
        hv.create(vmctl.MachineSpec(name="rd", disk=image, remote_desktop=True))
