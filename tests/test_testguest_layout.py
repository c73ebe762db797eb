"""The test guest builder reads Debian packages laid out merged-/usr (Debian 13) and classic (Debian 12).

The packages here are real .deb files built with ``dpkg-deb`` in the two layouts; the build runs
with every real tool (dpkg, cpio, mke2fs, qemu-img), only apt's download is replaced by a copy.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from vmctl.testguest import GuestBuildError
from vmctl.testguest import _image as image
from vmctl.testguest._common import _Versions
from vmctl.testguest._layout import busybox_binary, kernel_module_dir

RELEASE = "6.99.0-1-amd64"
LAYOUTS = {"classic": "", "merged-usr": "usr/"}


def _deb(tmp: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    tree = tmp / f"tree-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: test\n"
    )
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    out = tmp / f"{package}_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True, capture_output=True
    )
    return out


def _packages(tmp: Path, prefix: str) -> list[Path]:
    moddir = f"{prefix}lib/modules/{RELEASE}"
    kernel = _deb(
        tmp,
        f"linux-image-{RELEASE}",
        "6.99.0-1",
        {
            f"boot/vmlinuz-{RELEASE}": b"kernel",
            # Dependencies come from modules.dep when the package has one; each module needs
            # one other here, so the order of the result shows that it was read.
            f"{moddir}/modules.dep": "".join(f"kernel/{m}.ko: kernel/netfs.ko\n" for m in image.GUEST_MODULES).encode()
            + b"kernel/netfs.ko:\n"
            + "".join(f"kernel/{m}.ko: kernel/netfs.ko\n" for m in image.GUEST_MEDIA_MODULES).encode(),
            **{
                f"{moddir}/kernel/{m}.ko": f"module {m}".encode()
                for m in (*image.GUEST_MODULES, *image.GUEST_MEDIA_MODULES, "netfs")
            },
        },
    )
    busybox = _deb(tmp, "busybox-static", "1:1.37.0-1", {f"{prefix}bin/busybox": b"\x7fELF busybox"})
    return [kernel, busybox]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_build_reads_both_layouts(layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debs = _packages(tmp_path, LAYOUTS[layout])

    def fake_download(dest: Path, specs: list[str]) -> None:
        assert len(specs) == 2
        for deb in debs:
            shutil.copy(deb, dest)

    monkeypatch.setattr(image, "_download", fake_download)
    out = tmp_path / "out"
    out.mkdir()
    versions = _Versions(f"linux-image-{RELEASE}", "6.99.0-1", "1:1.37.0-1")
    image._build(out, versions, "hash", lambda _msg: None)

    manifest = json.loads((out / "guest.json").read_text())
    assert manifest["kernel_release"] == RELEASE
    assert manifest["modules"][0] == "netfs.ko"
    assert set(manifest["modules"]) == {f"{m}.ko" for m in ("netfs", *image.GUEST_MODULES)}
    # the media drivers are kept beside the guest, out of the initramfs
    assert manifest["media_modules"] == [f"{m}.ko" for m in image.GUEST_MEDIA_MODULES]
    with tarfile.open(out / "media-modules.tar") as tar:
        assert tar.getnames() == [*manifest["media_modules"], "list"]
        listed = tar.extractfile("list")
        assert listed is not None and listed.read().decode().split() == manifest["media_modules"]
    assert (out / "vmlinuz").read_bytes() == b"kernel"
    archive = gzip.decompress((out / "initrd.img").read_bytes())
    assert b"bin/busybox\0" in archive and b"\x7fELF busybox" in archive
    assert b"lib/modules/9p.ko\0" in archive and b"module 9p" in archive
    assert b"sr_mod" not in archive and b"bin/media\0" in archive


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_lookups_find_either_layout(layout: str, tmp_path: Path) -> None:
    prefix = LAYOUTS[layout]
    (tmp_path / f"{prefix}lib/modules/{RELEASE}").mkdir(parents=True)
    (tmp_path / f"{prefix}bin").mkdir(parents=True)
    (tmp_path / f"{prefix}bin/busybox").write_bytes(b"")
    assert kernel_module_dir(tmp_path, RELEASE) == tmp_path / f"{prefix}lib/modules/{RELEASE}"
    assert busybox_binary(tmp_path) == tmp_path / f"{prefix}bin/busybox"


def test_missing_paths_name_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match=f"neither lib/modules/{RELEASE} nor usr/lib/modules/{RELEASE}"):
        kernel_module_dir(tmp_path, RELEASE)
    with pytest.raises(GuestBuildError, match="neither bin/busybox nor usr/bin/busybox"):
        busybox_binary(tmp_path)


def test_links_in_the_package_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "modules" / RELEASE).mkdir(parents=True)
    (outside / "busybox").write_bytes(b"")
    package = tmp_path / "package"
    (package / "usr").mkdir(parents=True)
    (package / "lib").symlink_to(outside)
    (package / "usr" / "bin").symlink_to(outside)
    with pytest.raises(GuestBuildError):
        kernel_module_dir(package, RELEASE)
    with pytest.raises(GuestBuildError):
        busybox_binary(package)
