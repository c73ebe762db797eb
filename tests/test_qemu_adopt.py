"""Adopting a QEMU that vmctl did not start, through its QMP socket (``hv.adopt(name, qmp=...)``).

Real QEMU processes started here, held at their first instruction (``-S``): the spec read from
QMP and the command line, listing, opening from another connection, and destroy keeping or
deleting the disk. The verbs on a booting guest run in the contract suite (harness
``qemu-adopted``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import State
from vmctl.tools import run_tool
from vmctl_qemu._hypervisor import QemuHypervisor

StartQemu = Callable[..., tuple[Path, Path]]


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[QemuHypervisor]:
    conn = QemuHypervisor(state_dir=tmp_path / "state", accel="tcg")
    yield conn
    for vm in conn.machines(all=True):
        vm.destroy()


@pytest.fixture
def start_qemu(tmp_path: Path) -> Iterator[StartQemu]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *extra: str) -> tuple[Path, Path]:
        disk = tmp_path / f"{name}.qcow2"
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], timeout=30)
        qmp = tmp_path / f"{name}.qmp"
        argv = [
            "qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-accel", "tcg",
            "-m", "128", "-smp", "2", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-drive", f"file={disk},if=virtio,format=qcow2", *extra,
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert procs[-1].poll() is None, "QEMU exited"
            assert time.monotonic() < deadline, "QEMU made no QMP socket"
            time.sleep(0.02)
        return disk, qmp

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_adopted_qemu_spec_listing_and_other_connections(
    hv: QemuHypervisor, start_qemu: StartQemu, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    disk, qmp = start_qemu("theirs", "-virtfs", f"local,path={share},mount_tag=data,security_model=none,readonly=on")
    vm = hv.adopt("theirs", qmp=qmp)
    assert vm.managed is False and vm.state is State.PAUSED  # -S: not started yet
    spec = vm.spec
    assert (spec.memory_mib, spec.cpus, spec.disk, spec.overlay) == (128, 2, disk, False)
    assert spec.shared_dirs == {"data": share} and spec.readonly_shares == {"data"}
    assert spec.network is None and spec.kernel is None
    assert hv.machines() == [] and [m.name for m in hv.machines(all=True)] == ["theirs"]
    other = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    assert other.machine("theirs").managed is False and other.machine("theirs").pid == vm.pid
    vm.resume()
    assert other.machine("theirs").state is State.RUNNING
    with pytest.raises(vmctl.MachineExists):
        hv.adopt("theirs", qmp=qmp)


def test_adopt_refuses_what_is_no_qmp_socket(hv: QemuHypervisor, tmp_path: Path) -> None:
    with pytest.raises(vmctl.InvalidSpec, match="does not exist"):
        hv.adopt("x", qmp=tmp_path / "missing.qmp")
    (tmp_path / "file").write_text("")
    with pytest.raises(vmctl.InvalidSpec, match="not a UNIX socket"):
        hv.adopt("x", qmp=tmp_path / "file")
    with pytest.raises(vmctl.InvalidSpec):
        hv.adopt("../x", qmp=tmp_path / "file")
    assert hv.machines(all=True) == []


def test_destroy_ends_the_qemu_and_keeps_its_disk_unless_asked(hv: QemuHypervisor, start_qemu: StartQemu) -> None:
    kept, qmp1 = start_qemu("keep")
    gone, qmp2 = start_qemu("drop")
    keep = hv.adopt("keep", qmp=qmp1)
    drop = hv.adopt("drop", qmp=qmp2)
    pid = keep.pid
    assert pid is not None
    keep.destroy()
    drop.destroy(delete_disks=True)
    assert kept.is_file() and not gone.exists()
    assert not Path(f"/proc/{pid}").exists() or b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("keep")
