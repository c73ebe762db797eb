"""Importing an OVA on vSphere through the OvfManager, against vcsim (govmomi's simulator, not
vSphere): CreateImportSpec, ImportVApp, the upload to the lease's URL, HttpNfcLeaseComplete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.vcsim import Vcsim, vcsim_fixture
from vmctl.backend.tools import run_tool

from . import ova_build
from .ova_build import QCOW2, STREAM_VMDK, descriptor

vcsim = vcsim_fixture()


@pytest.fixture
def hv(vcsim: Vcsim) -> Iterator[Any]:
    conn = vcsim.connect(folder="ova")
    try:
        yield conn
    finally:
        for vm in conn.machines():
            vm.destroy()
        conn.close()


def _ova(tmp_path: Path, name: str, **kwargs: Any) -> Path:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\1" * (1 << 20))
    vmdk = tmp_path / "disk1.vmdk"
    run_tool(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw),
              str(vmdk)], timeout=30)  # fmt: skip
    ovf = descriptor(name, [("disk1.vmdk", 1 << 20, STREAM_VMDK)], file_sizes=[vmdk.stat().st_size], **kwargs)
    return ova_build.ova(tmp_path / f"{name}.ova", f"{name}.ovf", ovf, [("disk1.vmdk", vmdk)])


def test_ova_imports_through_the_ovf_manager(hv: Any, vcsim: Vcsim, tmp_path: Path) -> None:
    app = _ova(tmp_path, "imported", memory_mib=192, cpus=2)
    vm = hv.import_appliance(app, memory_mib=256)
    assert vm.managed and vm.state is vmctl.State.STOPPED
    again = hv.machine("imported")  # vmctl's spec was in the import spec's extraConfig
    assert (again.spec.memory_mib, again.spec.cpus, again.spec.disk, again.spec.overlay) == (256, 2, app, False)
    p = vm._props(["config.hardware.memoryMB", "config.hardware.numCPU", "config.hardware.device"])
    assert (p["config.hardware.memoryMB"], p["config.hardware.numCPU"]) == (256, 2)
    assert [d for d in p["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualDisk)]
    assert "nfc PUT" in vcsim._read_log()  # the disk went to the lease's URL
    with pytest.raises(vmctl.MachineExists):
        hv.import_appliance(app)
    vm.start()
    assert vm.state is vmctl.State.RUNNING
    vm.destroy()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("imported")


def test_what_vsphere_import_refuses(hv: Any, tmp_path: Path) -> None:
    app = _ova(tmp_path, "refused")
    with pytest.raises(vmctl.Unsupported, match="memory_mib and cpus only"):
        hv.import_appliance(app, serial_log=tmp_path / "x.log")
    qcow = tmp_path / "q"
    qcow.mkdir()
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow / "d.qcow2"), "1M"], timeout=30)
    (qcow / "q.ovf").write_bytes(descriptor("q", [("d.qcow2", 1 << 20, QCOW2)]))
    with pytest.raises(vmctl.Unsupported, match="stream-optimised"):
        hv.import_appliance(qcow / "q.ovf")
    assert hv.machines() == []
