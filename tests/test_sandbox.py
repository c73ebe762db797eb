"""The backends keep a hostile guest's share writes to metadata, and their records to themselves
(issue 13, attacks 2 and 3, at the backend level; the BOINC adapter's side is in
test_boinc_security.py).

On real QEMU the test guest acts hostile: its job script plants a setuid file, a symlink to a
host file, a FIFO and a device node in its 9p share, and tries to write into a read-only share.
On the host each must be a plain file owned by us (the guest's intent kept only as metadata).
"""

from __future__ import annotations

import json
import os
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.test_virtualbox_quirks import Sim, sim  # noqa: F401 (the simulator fixture)
from vmctl.backend.records import spec_from_record
from vmctl.boinc._safefs import GUEST_MODE_XATTR, UnsafeFile, read_bounded, stat_beneath
from vmctl.testguest import TestGuest, ensure_test_guest
from vmctl_libvirt._xml import DomainPlan, domain_xml
from vmctl_qemu._command import SANDBOX, qemu_argv, security_model
from vmctl_vmware._vmx import apply_spec, new_vmx

# -- the spec's read-only shares ----------------------------------------------------------------


def test_a_read_only_share_must_be_one_of_the_shares(tmp_path: Path) -> None:
    with pytest.raises(vmctl.InvalidSpec, match="readonly_shares"):
        vmctl.MachineSpec(name="m", kernel=_kernel(tmp_path), shared_dirs={"a": tmp_path}, readonly_shares={"b"})
    with pytest.raises(vmctl.InvalidSpec, match="readonly_shares"):
        vmctl.MachineSpec(name="m", kernel=_kernel(tmp_path), shared_dirs={"a": tmp_path}, readonly_shares="a")  # type: ignore[arg-type]


def test_read_only_shares_survive_the_record(tmp_path: Path) -> None:
    spec = vmctl.MachineSpec(
        name="m", kernel=_kernel(tmp_path), shared_dirs={"a": tmp_path, "b": tmp_path}, readonly_shares=["b"]
    )
    assert spec.readonly_shares == frozenset({"b"})
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["readonly_shares"] == ["b"]
    assert spec_from_record(data).readonly_shares == frozenset({"b"})
    with pytest.raises(vmctl.InvalidSpec, match="readonly_shares"):
        spec_from_record({**data, "readonly_shares": ["/etc"]})


def _kernel(tmp_path: Path) -> Path:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    return kernel


# -- QEMU's command line ------------------------------------------------------------------------


def test_qemu_shares_are_mapped_and_read_only_where_asked_and_qemu_runs_sandboxed(tmp_path: Path) -> None:
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    spec = vmctl.MachineSpec(
        name="m",
        kernel=_kernel(tmp_path),
        shared_dirs={"rw": tmp_path / "rw", "ro": tmp_path / "ro"},
        readonly_shares={"ro"},
    )
    argv = qemu_argv(
        spec, binary="qemu", accel="tcg", machine_type="q35", disk=None, disk_format="qcow2", serial_log=tmp_path / "l"
    )
    assert argv[argv.index("-sandbox") + 1] == SANDBOX
    assert set(SANDBOX.split(",")) == {
        "on",
        "obsolete=deny",
        "elevateprivileges=deny",
        "spawn=deny",
        "resourcecontrol=deny",
    }
    fsdevs = {a.split("path=")[1].split(",")[0]: a for a in argv if a.startswith("local,")}
    assert "security_model=mapped-xattr" in fsdevs[str(tmp_path / "rw")]
    assert "readonly" not in fsdevs[str(tmp_path / "rw")]
    assert fsdevs[str(tmp_path / "ro")].endswith(",security_model=mapped-xattr,readonly=on")
    assert not any("security_model=none" in a for a in argv)


def test_a_file_system_without_user_xattrs_gets_mapped_file() -> None:
    # procfs keeps no user.* attributes (EOPNOTSUPP): the metadata goes to .virtfs_metadata files
    assert security_model(Path("/proc")) == "mapped-file"


# -- QEMU: a hostile guest in its share ---------------------------------------------------------

HOSTILE_RUN_SH = """\
mnt=/run/hostile
ro=/run/readonly
mkdir -p "$mnt" "$ro"
mount -t 9p -o trans=virtio,version=9p2000.L "$VMCTL_SHARE_TAG" "$mnt"
mount -t 9p -o trans=virtio,version=9p2000.L ro "$ro"
echo root > "$mnt/suid"
chown 0:0 "$mnt/suid"
chmod 4755 "$mnt/suid"
ln -s {secret} "$mnt/link"
mkfifo "$mnt/fifo"
mknod "$mnt/zero" c 1 5
if echo owned > "$ro/owned" 2>/dev/null; then ro_write=accepted; else ro_write=refused; fi
if rm -f "$ro/keep" 2>/dev/null && [ ! -e "$ro/keep" ]; then ro_rm=accepted; else ro_rm=refused; fi
echo "$ro_write $ro_rm" > "$mnt/report"
sync
umount "$ro"
umount "$mnt"
"""


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[vmctl.Hypervisor]:
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    try:
        yield hv
    finally:
        for vm in hv.machines():
            vm.destroy()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_what_a_hostile_guest_makes_in_its_share_is_only_metadata_on_the_host(
    tmp_path: Path, guest: TestGuest, qemu: vmctl.Hypervisor
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    secret.chmod(0o600)
    share, readonly = tmp_path / "share", tmp_path / "ro"
    share.mkdir()
    readonly.mkdir()
    (readonly / "keep").write_text("the project's launcher\n")
    (share / "run.sh").write_text(HOSTILE_RUN_SH.format(secret=secret))
    log = tmp_path / "console.log"
    vm = qemu.create(
        vmctl.MachineSpec(
            name="hostile",
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=f"{guest.cmdline} vmctl.share=data",
            memory_mib=128,
            shared_dirs={"data": share, "ro": readonly},
            readonly_shares={"ro"},
            serial_log=log,
        )
    )
    vm.start()
    deadline = time.monotonic() + 240
    while not (share / "report").exists():
        assert time.monotonic() < deadline, "the guest's job did not run:\n" + log.read_text(errors="replace")[-3000:]
        assert vm.state is vmctl.State.RUNNING, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    while not (share / "report").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    vm.destroy()

    assert (share / "report").read_text().split() == ["refused", "refused"], "the read-only share was written"
    assert sorted(os.listdir(readonly)) == ["keep"]
    assert (readonly / "keep").read_text() == "the project's launcher\n"
    me = os.getuid()
    for name, kind in (("suid", stat.S_IFREG), ("link", stat.S_IFLNK), ("fifo", stat.S_IFIFO), ("zero", stat.S_IFCHR)):
        st = (share / name).lstat()
        assert stat.S_ISREG(st.st_mode), f"{name} is not a plain file on the host: {stat.filemode(st.st_mode)}"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{name} is setuid/setgid on the host"
        assert st.st_uid == me
        recorded = int.from_bytes(os.getxattr(share / name, GUEST_MODE_XATTR)[:4], "little")
        assert stat.S_IFMT(recorded) == kind, f"the guest's {name} is kept as metadata"
    assert int.from_bytes(os.getxattr(share / "suid", GUEST_MODE_XATTR)[:4], "little") & stat.S_ISUID
    assert secret.name in (share / "link").read_text(), "the link is a file holding its target's name"
    # and the adapter's safe reads still treat what the guest made as a link, FIFO or device
    for name in ("link", "fifo", "zero"):
        with pytest.raises(UnsafeFile, match="made by the guest"):
            read_bounded(share, name, 4096)
    assert read_bounded(share, "suid", 4096) == b"root\n"


@pytest.mark.parametrize("subdir", ["", "out/"])
def test_what_the_guest_made_through_a_mapped_file_share_is_read_as_it_meant(tmp_path: Path, subdir: str) -> None:
    """Where the host keeps no user xattrs QEMU's ``mapped-file`` model writes the guest's mode
    as ``virtfs.mode=N`` into ``.virtfs_metadata/NAME`` next to a plain file (planted here as
    QEMU writes it)."""
    (tmp_path / subdir / ".virtfs_metadata").mkdir(parents=True)
    for name, mode in (("link", stat.S_IFLNK | 0o777), ("fifo", stat.S_IFIFO | 0o644), ("data", stat.S_IFREG | 0o4755)):
        (tmp_path / subdir / name).write_text("/etc/passwd" if name == "link" else "42\n")
        meta = f"virtfs.uid=0\nvirtfs.gid=0\nvirtfs.mode={mode}\nvirtfs.rdev=0\n"
        (tmp_path / subdir / ".virtfs_metadata" / name).write_text(meta)
    for name in ("link", "fifo"):
        with pytest.raises(UnsafeFile, match="made by the guest"):
            read_bounded(tmp_path, subdir + name, 4096)
        with pytest.raises(UnsafeFile, match="made by the guest"):
            stat_beneath(tmp_path, subdir + name)
    assert read_bounded(tmp_path, subdir + "data", 4096) == b"42\n"


# -- QEMU: a record is checked again when read ---------------------------------------------------


def test_a_qemu_record_whose_disk_leads_out_of_the_machine_is_refused(
    tmp_path: Path, guest: TestGuest, qemu: vmctl.Hypervisor
) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"\x00" * 65536)
    vm = qemu.create(vmctl.MachineSpec(name="tampered", disk=guest.disk, memory_mib=64))
    record_path = tmp_path / "state" / "tampered" / "machine.json"
    record = json.loads(record_path.read_text())
    for disk in (str(secret), "../../shadow"):
        record_path.write_text(json.dumps({**record, "disk": disk, "disk_format": "raw"}))
        with pytest.raises(vmctl.InvalidSpec, match="disk"):
            qemu.machine("tampered").start()
        assert vm.state is not vmctl.State.RUNNING
    assert secret.read_bytes() == b"\x00" * 65536


# -- libvirt's domain XML -----------------------------------------------------------------------


def test_libvirt_filesystems_are_mapped_and_read_only_where_asked(tmp_path: Path) -> None:
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    spec = vmctl.MachineSpec(
        name="m",
        kernel=_kernel(tmp_path),
        shared_dirs={"rw": tmp_path / "rw", "ro": tmp_path / "ro"},
        readonly_shares={"ro"},
    )
    plan = DomainPlan(domain_type="qemu", uuid="0" * 32, disk_path=None, disk_format="qcow2", backing=None, metadata={})
    root = ET.fromstring(domain_xml(spec, plan))  # noqa: S314 (our own XML)
    filesystems = {fs.find("target").get("dir"): fs for fs in root.iter("filesystem")}  # type: ignore[union-attr]
    assert {tag: fs.get("accessmode") for tag, fs in filesystems.items()} == {"rw": "mapped", "ro": "mapped"}
    assert filesystems["ro"].find("readonly") is not None
    assert filesystems["rw"].find("readonly") is None


# -- VMware's .vmx --------------------------------------------------------------------------------


def test_vmware_read_only_shares_have_no_write_access(tmp_path: Path) -> None:
    disk = tmp_path / "d.vmdk"
    disk.write_bytes(b"d")
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    spec = vmctl.MachineSpec(
        name="m", disk=disk, shared_dirs={"rw": tmp_path / "rw", "ro": tmp_path / "ro"}, readonly_shares={"ro"}
    )
    vmx = new_vmx("m", disk)
    apply_spec(vmx, spec)
    access = {vmx.get(f"sharedFolder{i}.guestName"): vmx.get(f"sharedFolder{i}.writeAccess") for i in range(2)}
    assert access == {"ro": "FALSE", "rw": "TRUE"}


# -- VirtualBox shared folders --------------------------------------------------------------------


def test_virtualbox_shares_refuse_guest_symlinks_and_read_only_shares_are_read_only(sim: Sim) -> None:  # noqa: F811
    (sim.base_folder.parent / "rw").mkdir()
    (sim.base_folder.parent / "ro").mkdir()
    shares = {"rw": sim.base_folder.parent / "rw", "ro": sim.base_folder.parent / "ro"}
    sim.hv.create(sim.spec("shares", shared_dirs=shares, readonly_shares={"ro"}))
    for tag in shares:
        code, out, _ = sim.vbm("getextradata", "shares", f"VBoxInternal2/SharedFoldersEnableSymlinksCreate/{tag}")
        assert code == 0 and out.strip() == "Value: 0"
    settings = json.loads((sim.base_folder / "shares" / "shares.vbox").read_text())
    assert {sf["name"]: sf["writable"] for sf in settings["shared"]} == {"rw": True, "ro": False}
    assert sim.connect().machine("shares").spec.readonly_shares == frozenset({"ro"})


# -- VirtualBox NAT: host loopback (issue 13, attack 4) -------------------------------------------


def test_virtualbox_nat_never_reaches_host_loopback(sim: Sim) -> None:  # noqa: F811
    forward = vmctl.PortForward(host_port=2222, guest_port=22)
    sim.hv.create(sim.spec("nat", network=vmctl.Network(port_forwards=(forward,))))
    settings = json.loads((sim.base_folder / "nat" / "nat.vbox").read_text())
    nic = settings["nics"]["1"]
    assert nic["type"] == "nat" and nic["localhost_reachable"] is False, nic
    assert [rule.split(",")[3] for rule in nic["forwards"]] == ["2222"], "port forwards stay"
    sim.hv.create(sim.spec("offline", network=None))
    assert "localhost_reachable" not in json.loads((sim.base_folder / "offline" / "offline.vbox").read_text())[
        "nics"
    ].get("1", {})


def test_virtualbox_6_gets_no_localhost_switch_it_would_refuse(tmp_path: Path) -> None:
    from vmctl_virtualbox._vboxmanage import VBoxManageTransport

    for version, switch in (("6.1.50r161033", False), ("7.0.20r163906", True), ("7.1.4r165100", True)):
        fake = tmp_path / f"VBoxManage-{version}"
        fake.write_text(f"#!/bin/sh\necho {version}\n")
        fake.chmod(0o755)
        transport = VBoxManageTransport(str(fake))
        assert transport.version() == version and transport.localhost_switch is switch


# -- disk_usage(): what each backend keeps for a machine (issue 13, attack 9) --------------------


def _filled(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_qemu_disk_usage_is_the_machine_directory_not_the_base(tmp_path: Path) -> None:
    from vmctl.backend.diskuse import allocated_bytes

    base = _filled(tmp_path / "base.img", 4 << 20)
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    vm = hv.create(vmctl.MachineSpec(name="du", disk=base))
    try:
        used = vm.disk_usage()
        (directory,) = used.paths
        assert Path(directory) == tmp_path / "state" / "du"
        assert 0 < used.bytes == allocated_bytes([Path(directory)]) < 1 << 20, "the overlay, not the base"
        _filled(Path(directory) / "saved-state.bin", 2 << 20)  # what a suspend leaves there
        assert vm.disk_usage().bytes >= used.bytes + (2 << 20)
    finally:
        vm.destroy()


def test_virtualbox_disk_usage_is_the_machine_folder(sim: Sim) -> None:  # noqa: F811
    vm = sim.hv.create(sim.spec("du"))
    used = vm.disk_usage()
    assert used.paths == (str(sim.base_folder / "du"),)
    assert 0 < used.bytes < sim.disk.stat().st_size, "the differencing image, not the base"
    _filled(sim.base_folder / "du" / "Snapshots" / "saved.sav", 1 << 20)
    assert vm.disk_usage().bytes >= used.bytes + (1 << 20)


def test_vmware_disk_usage_is_the_vmx_directory(tmp_path: Path) -> None:
    from tests.contract.harness_vmware import fake_vmdk, make_vmrun, vmx_processes

    hv = vmctl.connect(
        "vmware", product="ws", vmrun=make_vmrun(tmp_path / "bin", tmp_path / "home"), vm_dir=tmp_path / "vms"
    )
    vm = hv.create(vmctl.MachineSpec(name="du", disk=fake_vmdk(tmp_path / "base.vmdk")))
    try:
        used = vm.disk_usage()
        assert used.paths == (str(tmp_path / "vms" / "du"),) and used.bytes > 0
        _filled(tmp_path / "vms" / "du" / "du.vmss", 1 << 20)
        assert vm.disk_usage().bytes >= used.bytes + (1 << 20)
    finally:
        vm.destroy()
        for proc in vmx_processes(str(tmp_path)):
            proc.kill()


def test_disk_usage_is_unsupported_where_the_backend_cannot_know(tmp_path: Path) -> None:
    from vmctl_memory import MemoryHypervisor

    class Unknowing(MemoryHypervisor):
        @property
        def capabilities(self) -> vmctl.Capabilities:
            return super().capabilities.without("disk_usage")

    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    assert vmctl.connect("memory", namespace="du").create(vmctl.MachineSpec(name="m", disk=disk)).disk_usage() == (
        vmctl.DiskUsage("m", 0)
    )
    vm = Unknowing(namespace="du-unknowing").create(vmctl.MachineSpec(name="m", disk=disk))
    with pytest.raises(vmctl.Unsupported, match="disk_usage"):
        vm.disk_usage()
    assert not vmctl.Capabilities().disk_usage, "a third-party backend claims nothing it did not build"
