"""The build itself: unpack the packages, then make the initramfs, the disk and the manifest."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._apt import _download
from ._common import (
    _GUEST_DATA,
    _GUEST_FILES,
    _INITRAMFS_DIRS,
    _MANIFEST,
    BUSYBOX_PACKAGE,
    DISK_SIZE,
    GUEST_CMDLINE,
    GUEST_MEDIA_MODULES,
    GUEST_MODULES,
    MEDIA_TAR,
    GuestBuildError,
    Progress,
    _Versions,
)
from ._layout import busybox_binary, kernel_module_dir
from ._modules import _resolve_modules
from ._tools import _run, _tool


def _build(out: Path, v: _Versions, data_hash: str, report: Progress) -> None:
    work = out / "work"
    dl = work / "download"
    dl.mkdir(parents=True)
    for tool in ("apt-get", "dpkg", "cpio", "mke2fs", "qemu-img"):
        _tool(tool)  # fail early, naming the package to install

    report(f"downloading {v.kernel_package} {v.kernel_version} and {BUSYBOX_PACKAGE} {v.busybox_version}")
    _download(dl, [f"{v.kernel_package}={v.kernel_version}", f"{BUSYBOX_PACKAGE}={v.busybox_version}"])
    kernel_deb = _one(dl.glob(f"{v.kernel_package}_*.deb"), f"{v.kernel_package} .deb")
    busybox_deb = _one(dl.glob(f"{BUSYBOX_PACKAGE}_*.deb"), f"{BUSYBOX_PACKAGE} .deb")

    report("unpacking the packages")
    kroot = work / "kernel"
    bbroot = work / "busybox"
    _run(["dpkg", "-x", str(kernel_deb), str(kroot)], what="unpacking the kernel package", timeout=600)
    _run(["dpkg", "-x", str(busybox_deb), str(bbroot)], what="unpacking busybox-static", timeout=120)

    vmlinuz = _one((kroot / "boot").glob("vmlinuz-*"), "boot/vmlinuz-* in the kernel package")
    release = vmlinuz.name[len("vmlinuz-") :]
    moddir = kernel_module_dir(kroot, release)
    busybox = busybox_binary(bbroot)

    report(f"collecting kernel modules for {release}")
    modules = _resolve_modules(moddir, GUEST_MODULES)
    loaded = {name for name, _ in modules}
    media = [(name, data) for name, data in _resolve_modules(moddir, GUEST_MEDIA_MODULES) if name not in loaded]

    report("building the initramfs")
    staging = work / "initramfs"
    _stage_initramfs(staging, busybox, modules)
    _write_media_tar(out / MEDIA_TAR, media)
    _make_cpio_gz(staging, out / "initrd.img")

    report("building the disk image")
    _make_disk(out / "disk.qcow2", work)

    shutil.copyfile(vmlinuz, out / "vmlinuz")
    manifest = {
        "kernel_package": v.kernel_package,
        "kernel_version": v.kernel_version,
        "kernel_release": release,
        "busybox_version": v.busybox_version,
        "data_hash": data_hash,
        "modules": [name for name, _ in modules],
        "media_modules": [name for name, _ in media],
        "cmdline": GUEST_CMDLINE,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in ("vmlinuz", "initrd.img", "disk.qcow2", MEDIA_TAR):
        (out / name).chmod(0o444)
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)


def _one(paths: Iterable[Path], what: str) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise GuestBuildError(f"expected exactly one {what}, found {[p.name for p in found]}")
    return found[0]


def _write_media_tar(dest: Path, media: Sequence[tuple[str, bytes]]) -> None:
    """The media drivers and ``list`` (their load order), with fixed metadata (reproducible)."""
    members = [*media, ("list", "".join(f"{n}\n" for n, _ in media).encode())]
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def _stage_initramfs(staging: Path, busybox: Path, modules: list[tuple[str, bytes]]) -> None:
    for d in _INITRAMFS_DIRS:
        (staging / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, staging / "bin" / "busybox")
    (staging / "bin" / "busybox").chmod(0o755)
    (staging / "bin" / "sh").symlink_to("busybox")
    for name, dest, mode in _GUEST_FILES:
        target = staging / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_GUEST_DATA / name, target)
        target.chmod(mode)
    for name, data in modules:
        (staging / "lib" / "modules" / name).write_bytes(data)
    (staging / "etc" / "vmctl" / "modules").write_text("".join(f"{n}\n" for n, _ in modules))
    (staging / "etc" / "hostname").write_text("vmctl-guest\n")


def _make_cpio_gz(staging: Path, dest: Path) -> None:
    entries = ["."]
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        rel = Path(dirpath).relative_to(staging)
        for n in sorted(dirnames) + sorted(filenames):
            entries.append(str(rel / n) if str(rel) != "." else n)
    listing = "".join(f"{e}\n" for e in entries).encode()
    proc = _run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        what="building the initramfs with cpio",
        timeout=300,
        cwd=staging,
        input_bytes=listing,
    )
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(proc.stdout)


def _make_disk(dest: Path, work: Path) -> None:
    content = work / "disk-content"
    content.mkdir()
    (content / "VMCTL-DISK").write_text("vmctl test guest disk\n")
    raw = work / "disk.raw"
    _run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext2",
            "-L",
            "vmctl",
            "-E",
            "root_owner=0:0",
            "-d",
            str(content),
            str(raw),
            DISK_SIZE,
        ],
        what="making the ext2 disk image",
        timeout=300,
    )
    _run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)],
        what="converting the disk image to qcow2",
        timeout=300,
    )
