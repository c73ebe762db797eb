"""The QEMU command line for a machine, built as an argv list (never a shell string)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmctl.types import MachineSpec

QMP_SOCKET = "qmp.sock"
"""Commands, serialised by the machine's lock."""
STATE_SOCKET = "state.sock"
"""State and statistics queries, from any process, without the lock."""
DISK_NODE = "disk0"
CDROM_NODE = "cdrom0"
FLOPPY_NODE = "floppy0"
NIC_NETDEV = "net0"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's seccomp filter, as libvirt sets it: no obsolete syscalls, no setuid/setgid/capset,
no fork/exec, no scheduler or affinity changes. Saving to and restoring from a descriptor
(``fd:``) still works."""


def opt(value: str | Path) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (a comma is doubled)."""
    return str(value).replace(",", ",,")


def resolve_accel(accel: str) -> str:
    """``auto`` means KVM where /dev/kvm is usable, else TCG."""
    if accel != "auto":
        return accel
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def security_model(directory: str | Path) -> str:
    """The 9p security model for a share: ``mapped-xattr`` where the host file system keeps
    ``user.*`` extended attributes, else ``mapped-file``.

    Both keep what the guest sets (modes, owners, symlinks, device nodes, FIFOs) as metadata:
    on the host every file the guest makes is a plain file or directory owned by the user QEMU
    runs as, without setuid bits. ``mapped-file`` keeps that metadata in ``.virtfs_metadata``
    directories inside the share.
    """
    try:
        os.getxattr(directory, "user.vmctl.probe", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return "mapped-file"
    return "mapped-xattr"


def qemu_argv(
    spec: MachineSpec,
    *,
    binary: str,
    accel: str,
    machine_type: str,
    disk: Path | None,
    disk_format: str,
    serial_log: Path,
    incoming: bool = False,
    loadvm: str | None = None,
    cpu_model: str | None = None,
    net_fd: int | None = None,
    extra: Sequence[str] = (),
    extra_disk_formats: Sequence[str] = (),
) -> list[str]:
    """QEMU's argv. ``net_fd``: the guest's network is passt's socket (see ``_passt``); without
    it, QEMU's own user network with ``restrict=on``, so the guest cannot reach the host's
    loopback through the gateway (nor anything else; port forwards still work)."""
    argv = [
        binary,
        "-name", f"guest={opt(spec.name)}",
        "-machine", opt(machine_type),
        "-accel", accel,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-sandbox", SANDBOX,
        "-chardev", f"socket,id=qmp,path={QMP_SOCKET},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=qmpstate,path={STATE_SOCKET},server=on,wait=off",
        "-mon", "chardev=qmpstate,mode=control",
        "-chardev", f"file,id=serial0,path={opt(serial_log)},append=on",
        "-serial", "chardev:serial0",
    ]  # fmt: skip
    # TCG emulates every feature of "max"; under KVM QEMU's own default model is the safe
    # choice (nested KVM hosts reject some of "max"/"host"'s MSRs and QEMU aborts).
    model = cpu_model or ("max" if accel == "tcg" else None)
    if model:
        argv += ["-cpu", opt(model)]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    # boot order only where there is a choice (a machine without a CD-ROM keeps its old argv)
    # (a kernel boots first: QEMU gives its loader bootindex 0)
    disk_boot = "" if spec.cdrom is None or spec.kernel else f",bootindex={1 if spec.boot_from_cdrom else 0}"
    if disk is not None:
        # JSON syntax: no escaping rules for file names
        node = {
            "driver": disk_format,
            "node-name": DISK_NODE,
            "file": {"driver": "file", "filename": str(disk)},
        }
        argv += ["-blockdev", json.dumps(node), "-device", f"virtio-blk-pci,drive={DISK_NODE},id=vda{disk_boot}"]
    argv += media_argv(spec, extra_disk_formats, machine_type)
    if spec.network is not None:
        argv += ["-netdev", netdev_option(spec, net_fd), "-device", f"virtio-net-pci,netdev={NIC_NETDEV},id=nic0"]
    for index, (tag, directory) in enumerate(sorted(spec.shared_dirs.items())):
        fsdev = f"local,id=fs{index},path={opt(directory)},security_model={security_model(directory)}"
        if tag in spec.readonly_shares:
            fsdev += ",readonly=on"
        argv += [
            "-fsdev", fsdev,
            "-device", f"virtio-9p-pci,fsdev=fs{index},mount_tag={tag}",
        ]  # fmt: skip
    if spec.remote_desktop:
        argv += remote_desktop_argv()
    if incoming:
        argv += ["-incoming", "defer"]
    if loadvm is not None:
        argv += ["-loadvm", loadvm]
    argv += list(extra)
    return argv


def extra_disk_node(index: int) -> str:
    """The block node of ``spec.extra_disks[index]``."""
    return f"xdisk{index}"


def media_argv(spec: MachineSpec, extra_disk_formats: Sequence[str], machine_type: str = "q35") -> list[str]:
    """The extra disks (virtio, after the main disk, each file as it is, in the format probed at
    create), the CD-ROM (read-only raw, on the q35 AHCI controller's second port; pc machines
    name their IDE buses alike) and the floppy (raw, drive A of an ISA floppy controller: q35
    has none of its own, pc has one on the board)."""
    argv: list[str] = []
    node: dict[str, Any]
    if len(extra_disk_formats) != len(spec.extra_disks):
        raise ValueError("one format for each extra disk")
    for index, (path, fmt) in enumerate(zip(spec.extra_disks, extra_disk_formats, strict=True)):
        node = {"driver": fmt, "node-name": extra_disk_node(index), "file": {"driver": "file", "filename": str(path)}}
        argv += [
            "-blockdev",
            json.dumps(node),
            "-device",
            f"virtio-blk-pci,drive={extra_disk_node(index)},id=xvd{index}",
        ]
    if spec.cdrom is not None:
        node = {
            "driver": "raw",
            "node-name": CDROM_NODE,
            "read-only": True,
            "file": {"driver": "file", "filename": str(spec.cdrom), "read-only": True},
        }
        boot = "" if spec.kernel else f",bootindex={0 if spec.boot_from_cdrom or spec.disk is None else 1}"
        argv += ["-blockdev", json.dumps(node), "-device", f"ide-cd,bus=ide.1,drive={CDROM_NODE},id=cd0{boot}"]
    if spec.floppy is not None:
        node = {"driver": "raw", "node-name": FLOPPY_NODE, "file": {"driver": "file", "filename": str(spec.floppy)}}
        argv += ["-blockdev", json.dumps(node)]
        if not machine_type.startswith("pc"):
            argv += ["-device", "isa-fdc,id=fdc0"]
        argv += ["-device", f"floppy,unit=0,drive={FLOPPY_NODE},id=fd0"]
    return argv


VNC_DISPLAYS = 100
"""VNC displays tried from :0 (port 5900) up: QEMU binds the first free one (``to=``)."""


def remote_desktop_argv() -> list[str]:
    """The VGA screen (every machine made since screenshots has the adapter) served by VNC on
    loopback, on the first free display from :0; no password on argv (or anywhere: a viewer such
    as the BOINC Manager's button knows none)."""
    return ["-vnc", f"127.0.0.1:0,to={VNC_DISPLAYS - 1}"]


def netdev_option(spec: MachineSpec, net_fd: int | None) -> str:
    if net_fd is not None:
        return f"stream,id={NIC_NETDEV},server=off,addr.type=fd,addr.str={net_fd}"
    netdev = f"user,id={NIC_NETDEV},restrict=on"
    for pf in spec.network.port_forwards if spec.network else ():
        netdev += f",hostfwd={pf.protocol}:127.0.0.1:{pf.host_port}-:{pf.guest_port}"
    return netdev
