"""A small Linux test guest, built offline from Debian packages and cached once per machine.

The guest is Debian's kernel (package ``linux-image-amd64``'s current dependency) plus a busybox
initramfs (``busybox-static``) whose ``/init`` is ``vmctl/_guest/init.sh``, and a small ext2 disk
as a qcow2 base image. It boots in a few seconds under QEMU's TCG and speaks a line protocol on
its serial console (``VMCTL-GUEST READY``, ``VMCTL-GUEST TICK n=...``, ...), documented at the top
of ``init.sh``.

Building needs the tools ``apt-get``/``apt-cache`` (with package lists: run ``apt-get update``
once), ``dpkg``, ``cpio``, ``mke2fs`` (e2fsprogs) and ``qemu-img`` (qemu-utils), and about 70 MB
of download and 500 MB of temporary disk space. The result (about 15 MB) is cached under
``cache_dir`` (default ``$VMCTL_CACHE_DIR/testguest`` or ``~/.cache/vmctl/testguest``) in a
directory keyed by the kernel package, its version, the busybox version and a hash of the guest's
data files, so later calls return at once.

Run ``python -m vmctl.testguest [--cache-dir DIR]`` to build and print the paths.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmctl.backend.locking import flocked
from vmctl.backend.tools import run_tool
from vmctl.errors import BackendError, OperationTimeout, VmctlError

__all__ = [
    "GUEST_CMDLINE",
    "GUEST_MODULES",
    "GuestBuildError",
    "TestGuest",
    "default_cache_dir",
    "ensure_test_guest",
]

log = logging.getLogger("vmctl.testguest")

#: The kernel command line for the guest; append ``vmctl.share=TAG`` arguments for 9p shares.
GUEST_CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1"

#: Kernel modules the guest loads (their dependencies are added from the kernel package).
#: virtio_pci is a module in Debian's kernel; ext2 is served by ext4 (CONFIG_EXT4_USE_FOR_EXT2),
#: which asks the crypto API for "crc32c" at mount time (crc32c_generic; crc32c_intel needs
#: SSE4.2, which TCG's default CPU lacks); button (ACPI power button) and evdev (/dev/input/event*,
#: read by busybox acpid) are modules too.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "ext4",
    "evdev",
    "button",
)

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
DISK_SIZE = "64M"

# Bump when the build procedure changes in a way that changes the result.
_BUILD_FORMAT = "1"
_MANIFEST = "guest.json"
_GUEST_DATA = Path(__file__).resolve().parent / "_guest"
# (file in _guest/, path in the initramfs, mode)
_GUEST_FILES: tuple[tuple[str, str, int], ...] = (
    ("init.sh", "init", 0o755),
    ("powerbutton.sh", "etc/acpi/PWRF/00000080", 0o755),
    ("udhcpc.sh", "etc/vmctl/udhcpc.sh", 0o755),
    ("share.sh", "bin/share", 0o755),
)
_INITRAMFS_DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "mnt",
    "root",
    "etc",
    "etc/vmctl",
    "etc/acpi",
    "lib/modules",
    "var",
    "run",
)

# Debian package to install for each tool the build runs.
_TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "cpio": "cpio",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
}
_EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_APT_LISTS = Path("/var/lib/apt/lists")

Progress = Callable[[str], None]


class GuestBuildError(VmctlError, RuntimeError):
    """Building the test guest failed; the message names the step and, if known, the fix."""


@dataclass(frozen=True)
class TestGuest:
    """The paths of a built test guest (all files are read-only; use a qcow2 overlay on ``disk``)."""

    __test__ = False  # not a pytest test class, despite the name

    kernel: Path
    initrd: Path
    disk: Path
    cmdline: str


@dataclass(frozen=True)
class _Versions:
    kernel_package: str  # linux-image-6.1.0-N-amd64
    kernel_version: str  # its Debian version
    busybox_version: str


# --------------------------------------------------------------------------------------------
# public entry point


def default_cache_dir() -> Path:
    """``$VMCTL_CACHE_DIR/testguest``, else ``$XDG_CACHE_HOME/vmctl/testguest``, else ``~/.cache/...``."""
    env = os.environ.get("VMCTL_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "testguest"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vmctl" / "testguest"


def ensure_test_guest(cache_dir: Path | None = None, *, progress: Progress | None = None) -> TestGuest:
    """Return the cached test guest, building it first if needed (several minutes at most).

    Safe to call from several processes at once: one builds, the others wait for it.
    Raises GuestBuildError naming what failed (and what to install, for a missing tool).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot create the cache directory {root}: {exc}") from exc
    data_hash = _guest_data_hash()

    def report(msg: str) -> None:
        log.info("%s", msg)
        if progress is not None:
            progress(msg)

    try:
        versions = _resolve_versions(root)
    except GuestBuildError as exc:
        # Without usable package lists a build is impossible; an earlier build still serves.
        fallback = _newest_build(root, data_hash)
        if fallback is None:
            raise
        log.warning("%s; using the cached build %s", exc, fallback.parent.name)
        return _load(fallback)

    target = root / _build_name(versions, data_hash)
    if (target / _MANIFEST).is_file():
        return _load(target / _MANIFEST)

    with _locked(root / ".lock", report):
        if (target / _MANIFEST).is_file():  # built by another process while we waited
            return _load(target / _MANIFEST)
        _remove_stale_temp_dirs(root)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            started = time.monotonic()
            _build(tmp, versions, data_hash, report)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            os.rename(tmp, target)
            report(f"test guest built in {time.monotonic() - started:.1f} s: {target}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _load(target / _MANIFEST)


# --------------------------------------------------------------------------------------------
# cache bookkeeping


def _guest_data_hash() -> str:
    h = hashlib.sha256()
    h.update(f"format={_BUILD_FORMAT}\nmodules={','.join(GUEST_MODULES)}\n".encode())
    h.update(f"disk={DISK_SIZE}\n".encode())
    for name, dest, mode in _GUEST_FILES:
        path = _GUEST_DATA / name
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise GuestBuildError(f"guest data file missing: {path}: {exc}") from exc
        h.update(f"{name} {dest} {mode:o} {len(content)}\n".encode())
        h.update(content)
    return h.hexdigest()[:16]


def _build_name(v: _Versions, data_hash: str) -> str:
    raw = f"{v.kernel_package}_{v.kernel_version}_bb{v.busybox_version}_{data_hash}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", raw)


def _load(manifest: Path) -> TestGuest:
    d = manifest.parent
    info = json.loads(manifest.read_text())
    return TestGuest(
        kernel=d / "vmlinuz",
        initrd=d / "initrd.img",
        disk=d / "disk.qcow2",
        cmdline=str(info.get("cmdline", GUEST_CMDLINE)),
    )


def _newest_build(root: Path, data_hash: str) -> Path | None:
    found = [m for m in root.glob(f"*_{data_hash}/{_MANIFEST}") if m.is_file()]
    return max(found, key=lambda m: m.stat().st_mtime) if found else None


def _remove_stale_temp_dirs(root: Path) -> None:
    # Only called with the lock held, so no other build is using them.
    for stale in root.glob(".tmp-*"):
        log.info("removing the leftover build directory %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _locked(path: Path, report: Progress, timeout: float = 3600.0) -> Iterator[None]:
    def waiting() -> None:
        report(f"waiting for another process building the test guest ({path})")

    try:
        with flocked(path, f"the lock {path}", timeout, poll=0.5, on_wait=waiting):
            yield
    except OperationTimeout as exc:
        raise GuestBuildError(f"timed out after {timeout:.0f} s waiting for the lock {path}") from exc
    except OSError as exc:
        raise GuestBuildError(f"cannot lock {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# subprocesses


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        for d in _EXTRA_TOOL_DIRS:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        pkg = _TOOL_PACKAGES.get(name, name)
        raise GuestBuildError(
            f"building the test guest needs the tool {name!r}, which was not found: "
            f"install it with `apt-get install {pkg}`"
        )
    return found


def _run(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    cmd = [_tool(argv[0]), *argv[1:]]
    log.debug("running %s", cmd)
    try:
        proc = run_tool(
            cmd,
            cwd=cwd,
            env={"DEBIAN_FRONTEND": "noninteractive"},
            input=input_bytes,
            timeout=timeout,
            check=False,
            text=False,
        )
    except OperationTimeout as exc:
        raise GuestBuildError(f"{what}: {argv[0]} did not finish within {timeout:.0f} s") from exc
    except BackendError as exc:
        raise GuestBuildError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise GuestBuildError(f"{what}: `{' '.join(argv)}` exited with status {proc.returncode}: {err[-2000:]}")
    return proc


def _apt_options() -> list[str]:
    # As root, apt drops to the _apt user for downloads, which cannot write to our temp dir
    # (it falls back with a warning); say so up front.
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


# --------------------------------------------------------------------------------------------
# package versions


def _apt_lists_fingerprint() -> str:
    h = hashlib.sha256()
    for base in (_APT_LISTS, Path("/etc/apt/preferences.d"), Path("/etc/apt/sources.list.d")):
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        for p in entries:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for f in (Path("/etc/apt/preferences"), Path("/etc/apt/sources.list")):
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resolve_versions(root: Path) -> _Versions:
    """The candidate kernel package and versions, memoised while apt's lists are unchanged."""
    memo = root / "apt-resolved.json"
    fingerprint = _apt_lists_fingerprint()
    try:
        saved = json.loads(memo.read_text())
        if saved.get("fingerprint") == fingerprint:
            return _Versions(
                kernel_package=str(saved["kernel_package"]),
                kernel_version=str(saved["kernel_version"]),
                busybox_version=str(saved["busybox_version"]),
            )
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    versions = _query_versions()
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **versions.__dict__}))
    os.replace(tmp, memo)
    return versions


def _parse_stanzas(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            out.setdefault(fields["Package"], fields)
    return out


def _query_versions() -> _Versions:
    no_lists = (
        "apt has no package lists (or no candidate for {pkg}); run `apt-get update` once "
        "so that the test guest can be downloaded"
    )
    try:
        proc = _run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE, BUSYBOX_PACKAGE],
            what="looking up the kernel and busybox packages",
            timeout=120,
        )
    except GuestBuildError as exc:
        if "No packages found" in str(exc) or "Unable to locate" in str(exc):
            raise GuestBuildError(f"{no_lists.format(pkg=KERNEL_METAPACKAGE)} ({exc})") from exc
        raise
    stanzas = _parse_stanzas(proc.stdout.decode(errors="replace"))
    meta = stanzas.get(KERNEL_METAPACKAGE)
    bb = stanzas.get(BUSYBOX_PACKAGE)
    if meta is None:
        raise GuestBuildError(no_lists.format(pkg=KERNEL_METAPACKAGE))
    if bb is None or "Version" not in bb:
        raise GuestBuildError(no_lists.format(pkg=BUSYBOX_PACKAGE))
    m = re.search(r"(linux-image-[0-9][^\s,(|]*)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?", meta.get("Depends", ""))
    if m is None:
        raise GuestBuildError(
            f"cannot find the kernel package in {KERNEL_METAPACKAGE}'s dependencies: {meta.get('Depends', '')!r}"
        )
    kernel_version = m.group(2) or meta.get("Version", "")
    if not kernel_version:
        raise GuestBuildError(f"cannot tell the version of {m.group(1)}")
    return _Versions(kernel_package=m.group(1), kernel_version=kernel_version, busybox_version=bb["Version"])


# --------------------------------------------------------------------------------------------
# the build


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
    moddir = kroot / "lib" / "modules" / release
    if not moddir.is_dir():
        raise GuestBuildError(f"the kernel package has no lib/modules/{release}")
    busybox = bbroot / "bin" / "busybox"
    if not busybox.is_file():
        raise GuestBuildError(f"{BUSYBOX_PACKAGE} has no bin/busybox")

    report(f"collecting kernel modules for {release}")
    modules = _resolve_modules(moddir, GUEST_MODULES)

    report("building the initramfs")
    staging = work / "initramfs"
    _stage_initramfs(staging, busybox, modules)
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
        "cmdline": GUEST_CMDLINE,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in ("vmlinuz", "initrd.img", "disk.qcow2"):
        (out / name).chmod(0o444)
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)


def _one(paths: Iterable[Path], what: str) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise GuestBuildError(f"expected exactly one {what}, found {[p.name for p in found]}")
    return found[0]


def _download(dest: Path, specs: list[str]) -> None:
    try:
        _run(
            ["apt-get", *_apt_options(), "download", *specs],
            what="downloading the test guest's packages",
            timeout=1200,
            cwd=dest,
        )
    except GuestBuildError as exc:
        text = str(exc)
        if any(
            s in text
            for s in (
                "Unable to locate",
                "has no installation candidate",
                "Can't select",
                "not found",
                "No packages found",
            )
        ):
            raise GuestBuildError(
                f"{text}\napt's package lists look empty or stale: run `apt-get update` once"
            ) from exc
        raise


# ---- kernel modules


def _modinfo(data: bytes, what: str) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 kernel module's .modinfo section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise GuestBuildError(f"{what} is not a 64-bit ELF kernel module")
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from(end + "IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, off, size = section(i)
        name = data[stroff + name_off : data.index(b"\0", stroff + name_off)]
        if name == b".modinfo":
            for item in data[off : off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def _module_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".ko"):
        return raw
    if name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if name.endswith(".ko.zst"):
        return _run(["zstd", "-dc", str(path)], what=f"decompressing {name}", timeout=60).stdout
    raise GuestBuildError(f"unknown kernel module format: {path}")


def _canon(name: str) -> str:
    return name.replace("-", "_")


def _module_stem(path: Path) -> str:
    return _canon(path.name.split(".ko", 1)[0])


def _resolve_modules(moddir: Path, wanted: Sequence[str]) -> list[tuple[str, bytes]]:
    """(file name, uncompressed .ko) for wanted and their dependencies, dependencies first.

    Uses modules.dep when the package ships one (Debian's does not: depmod runs at install
    time), else the ``depends=`` field of each module's .modinfo section, which is what depmod
    reads. Wanted modules that are built into the kernel are skipped.
    """
    files = {_module_stem(p): p for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.\w+)?$", p.name)}
    builtin: set[str] = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.is_file():
        builtin = {_module_stem(Path(line)) for line in builtin_file.read_text().split()}
    depfile = moddir / "modules.dep"
    deps_from_file: dict[str, list[str]] | None = None
    if depfile.is_file():
        deps_from_file = {}
        for line in depfile.read_text().splitlines():
            head, _, tail = line.partition(":")
            deps_from_file[_module_stem(Path(head))] = [_module_stem(Path(t)) for t in tail.split()]

    cache: dict[str, bytes] = {}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, parent: str | None) -> None:
        name = _canon(name)
        if name in order:
            return
        if name in visiting:
            raise GuestBuildError(f"kernel module dependency cycle at {name}")
        path = files.get(name)
        if path is None:
            if name in builtin:
                log.debug("module %s is built into the kernel", name)
                return
            via = f" (needed by {parent})" if parent else ""
            raise GuestBuildError(f"kernel module {name}{via} not found under {moddir}")
        visiting.add(name)
        data = _module_bytes(path)
        cache[name] = data
        if deps_from_file is not None:
            deps = deps_from_file.get(name, [])
        else:
            deps = [d for v in _modinfo(data, str(path)).get("depends", []) for d in v.split(",") if d]
        for dep in deps:
            visit(dep, name)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(w, None)
    log.info("guest kernel modules: %s", " ".join(order))
    return [(f"{name}.ko", cache[name]) for name in order]


# ---- initramfs and disk


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


# --------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vmctl.testguest", description="Build (once) and show the vmctl test guest."
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        guest = ensure_test_guest(args.cache_dir)
    except GuestBuildError as exc:
        print(f"error: {exc}")
        return 1
    print(f"kernel  {guest.kernel}")
    print(f"initrd  {guest.initrd}")
    print(f"disk    {guest.disk}")
    print(f"cmdline {guest.cmdline}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
