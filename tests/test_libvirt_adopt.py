"""Adopted libvirt domains: domains vmctl did not create, opened with ``hv.machine(name)``.

On libvirt's in-process mock driver (test:///default): its shipped domain ``test`` takes every
verb; a domain defined from plain XML is listed only by ``machines(all=True)``; its spec is read
from the domain XML (also from a real virt-manager definition); and destroy keeps its disks unless
``delete_disks=True``. The same verbs against a real libvirtd run in the contract suite
(harness ``libvirt-qemu-adopted``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import State
from vmctl.tools import run_tool

from .contract.harness_libvirt_adopted import plain_domain_xml

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
SAMPLES = Path(__file__).parent / "samples" / "libvirt"


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[vmctl.Hypervisor]:
    conn = vmctl.connect("libvirt", uri=URI, state_dir=tmp_path / "overlays")
    yield conn
    conn.close()


@pytest.fixture
def raw() -> Iterator[libvirt.virConnect]:
    """A second connection to the same (per-process) mock driver: vmctl's peer, "the user"."""
    conn = libvirt.open(URI)
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    conn.close()


def _image(path: Path) -> Path:
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], timeout=30)
    return path


@pytest.fixture
def shipped_domain(raw: libvirt.virConnect) -> Iterator[None]:
    """The mock driver's own running domain "test", put back as it was after the test (the driver
    lives as long as any connection of the process, so later tests would miss it)."""
    xml = raw.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    yield
    try:
        dom = raw.lookupByName("test")
    except libvirt.libvirtError:
        dom = raw.defineXML(xml)
    if not dom.isActive():
        dom.create()


def test_the_mock_drivers_own_domain_takes_every_verb(hv: vmctl.Hypervisor, shipped_domain: None) -> None:
    """The issue's bar: hv.machine("test") opens the domain test:///default ships, and every
    verb works on it with the meaning it has on vmctl's own machines."""
    vm = hv.machine("test")
    assert not vm.managed
    assert "test" not in [m.name for m in hv.machines()]
    assert [m.name for m in hv.machines(all=True) if not m.managed] == ["test"]
    spec = vm.spec
    assert (spec.name, spec.memory_mib, spec.cpus) == ("test", 8192, 2)
    assert spec.disk == Path("/guest/diskimage1") and spec.overlay is False
    assert spec.network is not None and spec.kernel is None
    assert vm.state is State.RUNNING
    vm.pause()
    assert vm.state is State.PAUSED
    vm.resume()
    vm.suspend()
    assert vm.state is State.SUSPENDED
    vm.start()
    assert vm.state is State.RUNNING
    snap = vm.snapshot("before", "taken by vmctl")
    assert snap.has_memory and [s.name for s in vm.snapshots()] == ["before"]
    vm.poweroff()
    assert vm.state is State.STOPPED
    vm.revert("before")
    assert vm.state is State.RUNNING
    vm.delete_snapshot("before")
    assert vm.snapshots() == []
    assert vm.restart() is True
    assert vm.restart(hard=True) is False
    assert vm.stop() is True and vm.state is State.STOPPED
    with pytest.raises(vmctl.InvalidState):
        vm.pause()
    assert vm.usage().machine == "test"
    vm.start()
    vm.destroy()
    with pytest.raises(vmctl.MachineNotFound):
        hv.machine("test")
    assert "test" not in [m.name for m in hv.machines(all=True)]


def test_destroy_keeps_an_adopted_domains_disks_unless_asked(
    hv: vmctl.Hypervisor, raw: libvirt.virConnect, tmp_path: Path
) -> None:
    kept = _image(tmp_path / "kept.qcow2")
    gone = _image(tmp_path / "gone.qcow2")
    for name, disk in (("keep", kept), ("drop", gone)):
        raw.defineXML(plain_domain_xml(vmctl.MachineSpec(name=name, disk=disk), "test", disk, None, None))
    with pytest.raises(vmctl.InvalidSpec):
        hv.machine("keep").destroy(delete_disks="yes")  # type: ignore[arg-type]
    hv.machine("keep").destroy()
    hv.machine("drop").destroy(delete_disks=True)
    assert kept.is_file(), "a disk vmctl did not make is kept by default"
    assert not gone.exists(), "delete_disks=True deletes the adopted domain's disks"
    assert {d.name() for d in raw.listAllDomains()} == {"test"}


def test_delete_disks_never_deletes_a_vmctl_machines_base_image(hv: vmctl.Hypervisor, tmp_path: Path) -> None:
    base = _image(tmp_path / "base.qcow2")
    vm = hv.create(vmctl.MachineSpec(name="mine", disk=base))
    assert vm.managed
    vm.destroy(delete_disks=True)
    assert base.is_file()
    assert list((tmp_path / "overlays").glob("mine-*.qcow2")) == []


def test_adopted_spec_reads_overlays_kernels_shares_and_serial_logs(
    hv: vmctl.Hypervisor, raw: libvirt.virConnect, tmp_path: Path
) -> None:
    base = _image(tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    spec = vmctl.MachineSpec(
        name="full",
        disk=base,
        kernel=kernel,
        memory_mib=384,
        cpus=3,
        network=vmctl.Network(),
        serial_log=tmp_path / "console.log",
    )
    raw.defineXML(plain_domain_xml(spec, "test", overlay, base, "console=ttyS0"))
    read = hv.machine("full").spec
    assert read.disk == base and read.overlay is True  # the domain writes to an overlay over base
    assert (read.memory_mib, read.cpus, read.kernel, read.cmdline) == (384, 3, kernel, "console=ttyS0")
    assert read.network == vmctl.Network() and read.serial_log == tmp_path / "console.log"


def test_spec_of_a_virt_manager_domain() -> None:
    from vmctl_libvirt._adopt import disk_files, spec_from_domain

    xml = (SAMPLES / "virt-manager-testVM.xml").read_text()
    spec = spec_from_domain(xml)
    assert (spec.name, spec.memory_mib, spec.cpus) == ("testVM", 2000, 2)
    assert spec.disk == Path("/data/images/rocky9.qcow2") and spec.overlay is False
    assert spec.network == vmctl.Network() and spec.serial_log is None and spec.shared_dirs == {}
    # the CD-ROM is no disk of the machine: delete_disks never deletes an installer ISO
    assert disk_files(xml) == ["/data/images/rocky9.qcow2", "/var/lib/libvirt/images/testVol.qcow2"]


def test_domains_whose_names_vmctl_cannot_address_are_left_out_of_all(
    hv: vmctl.Hypervisor, raw: libvirt.virConnect, tmp_path: Path
) -> None:
    disk = _image(tmp_path / "d.qcow2")
    xml = plain_domain_xml(vmctl.MachineSpec(name="placeholder", disk=disk), "test", disk, None, None)
    raw.defineXML(xml.replace("<name>placeholder</name>", "<name>my windows vm</name>"))
    names = [m.name for m in hv.machines(all=True)]
    assert "my windows vm" not in names and "test" in names


def test_cli_lists_adopted_machines_with_all_and_destroys_their_disks_only_when_told(
    raw: libvirt.virConnect, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from vmctl.cli import main

    disk = _image(tmp_path / "d.qcow2")
    raw.defineXML(plain_domain_xml(vmctl.MachineSpec(name="theirs", disk=disk), "test", disk, None, None))
    connect = ["--backend", "libvirt", "--option", f"uri={URI}", "--option", f"state_dir={tmp_path / 'o'}"]
    assert main([*connect, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*connect, "list", "--all", "--json"]) == 0
    listed = {m["name"]: m["managed"] for m in json.loads(capsys.readouterr().out)}
    assert listed == {"test": False, "theirs": False}
    assert main([*connect, "destroy", "theirs"]) == 0
    assert disk.is_file()
    raw.defineXML(plain_domain_xml(vmctl.MachineSpec(name="theirs", disk=disk), "test", disk, None, None))
    assert main([*connect, "destroy", "--delete-disks", "theirs"]) == 0
    assert not disk.exists()
