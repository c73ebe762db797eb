"""The remote transport: a machine driven through qemu+ssh://root@127.0.0.1:PORT/system.

The test generates a client key and a host key, starts its own sshd on a free loopback port
(root login by that key only), and points libvirt's ssh transport at it. Overlays on a remote
host are volumes of a storage pool there: the test uses a pool of its own and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import vmctl
from vmctl import State
from vmctl.backend.ports import free_port
from vmctl.tools import run_tool

from .contract.harness import wait_until
from .contract.harness_libvirt import load_services, readable_test_guest
from .contract.serial_probe import SerialLogProbe

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.slow

SSHD = "/usr/sbin/sshd"
KNOWN_HOSTS = Path.home() / ".ssh" / "known_hosts"


@contextlib.contextmanager
def _known_hosts_restored() -> Iterator[None]:
    """libvirt's ssh transport with no_verify=1 records the host key: put the file back as it was."""
    before = KNOWN_HOSTS.read_bytes() if KNOWN_HOSTS.exists() else None
    ssh_dir_existed = KNOWN_HOSTS.parent.exists()
    try:
        yield
    finally:
        if before is not None:
            KNOWN_HOSTS.write_bytes(before)
        else:
            KNOWN_HOSTS.unlink(missing_ok=True)
            if not ssh_dir_existed:
                shutil.rmtree(KNOWN_HOSTS.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def ssh_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.path.exists(SSHD):
        pytest.fail("sshd is missing: apt-get install openssh-server")
    load_services().ensure_libvirtd()
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], timeout=30)
    run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], timeout=30)
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host_key'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                f"PidFile {d / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "",
            ]
        )
    )
    privsep = Path("/run/sshd")
    made_privsep = not privsep.exists()
    privsep.mkdir(mode=0o755, exist_ok=True)
    log = open(d / "sshd.log", "wb")  # closed in the finally below
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    try:

        def listening() -> bool:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 10, "sshd to listen")
        keyfile = quote(str(d / "client_key"), safe="/")
        with _known_hosts_restored():
            yield f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={keyfile}&no_verify=1&no_tty=1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if made_privsep:
            shutil.rmtree(privsep, ignore_errors=True)


def test_a_machine_through_the_ssh_transport(ssh_uri: str, tmp_path: Path) -> None:
    kernel, initrd, disk, cmdline = readable_test_guest()
    pool = f"vmctl-sshtest-{os.getpid()}"
    pool_path = f"/var/lib/libvirt/images/{pool}"
    name = f"remote-{time.monotonic_ns() % 10**8}"
    serial = tmp_path / "serial.log"  # a path on the "remote" host, which is this one
    started = time.monotonic()
    hv = vmctl.connect("libvirt", uri=ssh_uri, pool=pool, pool_path=pool_path)
    connect_took = time.monotonic() - started
    local = vmctl.connect("libvirt", uri="qemu:///system")
    raw = libvirt.open("qemu:///system")
    try:
        assert hv.capabilities.events and hv.capabilities.snapshots
        vm = hv.create(
            vmctl.MachineSpec(name=name, disk=disk, kernel=kernel, initrd=initrd, cmdline=cmdline, serial_log=serial)
        )
        # The overlay is a volume of the pool on the libvirt host, backed by the base image.
        vols = raw.storagePoolLookupByName(pool).listAllVolumes(0)
        assert len(vols) == 1 and vols[0].name().startswith(f"{name}-") and vols[0].name().endswith(".qcow2")
        assert f"<path>{disk}</path>" in vols[0].XMLDesc(0)
        assert vm.pid is None  # no process of ours to see on a remote host
        fresh = vm.disk_usage()  # the volume's allocation, as the remote daemon measures it
        assert fresh.paths == (vols[0].path(),) and fresh.bytes == vols[0].info()[2]
        probe = SerialLogProbe(serial)
        vm.start()
        probe.wait_ready(60)
        # The same machine, seen through the local socket: one libvirtd, two transports.
        assert local.machine(name).state is State.RUNNING
        vm.pause()
        assert local.machine(name).state is State.PAUSED
        vm.resume()
        usage = hv.usage_all()[name]
        assert usage.cpu_seconds is not None and usage.cpu_seconds > 0
        vm.snapshot("s1")
        assert [s.name for s in vm.snapshots()] == ["s1"]
        assert vm.disk_usage().bytes > fresh.bytes + (1 << 20), "the guest's RAM, saved into the volume"
        # Events travel over ssh too: the stop is seen without polling.
        assert vm.stop(timeout=60) is True
        assert vm.state is State.STOPPED
        vm.destroy()
        assert raw.storagePoolLookupByName(pool).listAllVolumes(0) == []
        with pytest.raises(vmctl.MachineNotFound):
            local.machine(name)
    finally:
        with contextlib.suppress(vmctl.MachineNotFound):
            local.machine(name).destroy()
        with contextlib.suppress(libvirt.libvirtError):
            p = raw.storagePoolLookupByName(pool)
            for v in p.listAllVolumes(0):
                v.delete(0)
            if p.isActive():
                p.destroy()
            p.delete(0)
            p.undefine()
        raw.close()
        local.close()
        hv.close()
    print(f"connect over ssh took {connect_took:.2f} s")
