"""Contract harnesses for adopted libvirt domains: each machine is defined outside vmctl, from plain
domain XML with no vmctl metadata (``virsh define`` on a real libvirtd; the libvirt API of the
in-process mock driver), and then opened with ``hv.machine(name)``."""

from __future__ import annotations

import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

import vmctl
from vmctl.tools import run_tool

from .harness_libvirt import LibvirtQemuHarness, LibvirtTestDriverHarness, load_services

#: overlays of the adopted domains: a directory libvirt's QEMU user can reach
ADOPT_ROOT = Path("/var/lib/libvirt/images")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def plain_domain_xml(
    spec: vmctl.MachineSpec, domain_type: str, disk: Path, base: Path | None, cmdline: str | None
) -> str:
    """Domain XML as a user writes it for ``virsh define``: no vmctl metadata, libvirt's defaults."""
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))
    os_el = _sub(dom, "os")
    if domain_type == "test":
        _sub(os_el, "type", "hvm")
    else:
        _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        if cmdline:
            _sub(os_el, "cmdline", cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    devices = _sub(dom, "devices")
    disk_el = _sub(devices, "disk", type="file", device="disk")
    _sub(disk_el, "driver", name="qemu", type="qcow2")
    _sub(disk_el, "source", file=str(disk))
    if base is not None:
        # the shared base is only read: keep libvirt from relabelling (chowning) it
        store = _sub(disk_el, "backingStore", type="file")
        _sub(store, "format", type="qcow2")
        source = _sub(store, "source", file=str(base))
        _sub(source, "seclabel", model="dac", relabel="no")
        _sub(store, "backingStore")
    _sub(disk_el, "target", dev="vda", bus="virtio")
    if spec.network is not None:
        nic = _sub(devices, "interface", type="user")
        _sub(nic, "model", type="virtio")
    if spec.serial_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(spec.serial_log), append="on")  # the probe counts boots in it
        _sub(serial, "target", port="0")
    _sub(_sub(devices, "video"), "model", type="vga")
    if domain_type != "test":
        _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


class LibvirtTestDriverAdoptedHarness(LibvirtTestDriverHarness):
    """``test:///default`` with domains defined through libvirt's own API, then adopted."""

    id = "libvirt-test-adopted"
    adopted = True

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        # test:///default is one driver per process: this second connection sees the same domains
        self.outside = libvirt.open("test:///default")

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        assert spec.disk is not None
        self.outside.defineXML(plain_domain_xml(spec, "test", spec.disk, None, None))
        return self.hv.machine(spec.name)

    def leftovers(self, name: str) -> list[str]:
        return [f"domain {name}" for vm in self.hv.machines(all=True) if vm.name == name]

    def teardown(self) -> None:
        for vm in self.hv.machines(all=True):
            if not vm.managed and vm.name != "test":  # the driver's own domain stays
                vm.destroy()
        super().teardown()
        self.outside.close()


class LibvirtQemuAdoptedHarness(LibvirtQemuHarness):
    """``qemu:///system``: each test guest defined with ``virsh define`` from plain XML over an
    overlay the harness made with qemu-img, then adopted. destroy keeps that overlay (vmctl did not
    make it); the harness deletes it at teardown."""

    id = "libvirt-qemu-adopted"
    adopted = True

    def setup(self, tmp: Path) -> None:
        super().setup(tmp)
        load_services().ensure_libvirtd()
        # unique on the host: every pytest process (xdist workers, other runs) has its own tmp.name
        # "harness-libvirt-qemu-adopted0", and one's teardown would delete another's overlays
        self.disks = Path(tempfile.mkdtemp(prefix=f"vmctl-adopt-{tmp.name}-", dir=ADOPT_ROOT))
        self.disks.chmod(0o711)

    def create(self, spec: vmctl.MachineSpec) -> vmctl.Machine:
        assert spec.disk is not None
        overlay = self.disks / f"{spec.name}.qcow2"
        run_tool(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(spec.disk), str(overlay)],
            timeout=60,
        )
        xml_file = self.disks / f"{spec.name}.xml"
        xml_file.write_text(plain_domain_xml(spec, "qemu", overlay, spec.disk, spec.cmdline))
        run_tool(["virsh", "-c", self.uri, "define", str(xml_file)], timeout=60)
        xml_file.unlink()
        self.named.add(spec.name)
        return self.hv.machine(spec.name)

    def teardown(self) -> None:
        for vm in self.hv.machines(all=True):
            if vm.name in self.named:
                vm.destroy(delete_disks=not vm.managed)
        self.hv.close()
        shutil.rmtree(self.disks, ignore_errors=True)


HARNESSES = [LibvirtTestDriverAdoptedHarness, LibvirtQemuAdoptedHarness]
