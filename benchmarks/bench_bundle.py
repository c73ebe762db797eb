"""The frozen ``vmctl-boinc`` (``vmctl-boinc bundle``) beside the venv install: size, cold start, memory.

    .venv/bin/python benchmarks/bench_bundle.py [--quick]

Builds the bundle (twice without ``--quick``, to compare the two builds' sha256), then runs
``vmctl-boinc --version`` and ``vmctl-boinc --backends`` (which imports every bundled backend's
provider) from both installs, each a fresh process; memory is the peak RSS of the process tree
(GNU time: the one-file bootloader and the interpreter it starts). "Cold" means a new process;
the page cache is warm (dropping it needs root and would measure the disk).
The venv's size counts vmctl and its runtime dependencies' installed files, not the system
interpreter the venv uses (libpython and the standard library, listed separately).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from benchlib import Report, median, mib, ms, p95, parse_args

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DISTS = ("vmctl", "psutil", "qemu.qmp", "sysv_ipc", "libvirt-python")


def build(out: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vmctl.boinc", "bundle", "--out", str(out)], check=True)
    return out / "vmctl-boinc", time.perf_counter() - started


def run_once(argv: list[str]) -> float:
    """Seconds one run of ``argv`` takes."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def peak_rss(argv: list[str]) -> int:
    """Peak RSS (bytes) of ``argv``'s process tree, as GNU time reports it. Not measured from
    here: a child forked from this (large) interpreter inherits its high-water mark."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    return int(done.stderr.strip().splitlines()[-1]) * 1024


def dist_bytes(name: str) -> int:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return 0
    total = 0
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def tree_bytes(path: Path, suffix: str = ".py") -> int:
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}") if p.is_file())


def venv_bytes() -> int:
    total = sum(dist_bytes(name) for name in RUNTIME_DISTS if name != "vmctl")
    # vmctl is installed editable: count its sources (vmctl/ and the bundled backends).
    total += tree_bytes(ROOT / "vmctl")
    for backend in ("vmctl_qemu", "vmctl_libvirt", "vmctl_virtualbox", "vmctl_memory"):
        total += tree_bytes(ROOT / "backends" / backend)
    return total


def interpreter_bytes() -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib") / str(sysconfig.get_config_var("LDLIBRARY"))
    total = sum(p.stat().st_size for p in stdlib.rglob("*") if p.is_file() and "site-packages" not in p.parts)
    return total + (libpython.stat().st_size if libpython.is_file() else 0)


def main() -> None:
    args = parse_args("the frozen vmctl-boinc against the venv install")
    report = Report("bundle", args)
    if importlib.util.find_spec("PyInstaller") is None or not Path("/usr/bin/time").exists():
        report.skip("needs PyInstaller (pip install 'vmctl[bundle]') and GNU time (apt-get install time)")
    venv_cmd = str(Path(sys.executable).parent / "vmctl-boinc")
    runs = 5 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-bundle-") as tmp:
        bundle, build_time = build(Path(tmp) / "a")
        hashes = [hashlib.sha256(bundle.read_bytes()).hexdigest()]
        if not args.quick:
            again, _ = build(Path(tmp) / "b")
            hashes.append(hashlib.sha256(again.read_bytes()).hexdigest())

        size = report.table("Size", ["install", "MiB", "note"])
        size.add("bundle (one file)", mib(bundle.stat().st_size), "interpreter, vmctl, libvirt.so and its libraries")
        size.add("venv: vmctl + runtime deps", mib(venv_bytes()), "plus the system Python below")
        size.add("system Python 3.11 (stdlib + libpython)", mib(interpreter_bytes()), "the venv needs it")
        size.note(f"bundle build: {build_time:.0f} s")
        size.note(
            "reproducible: two builds give the same sha256"
            if len(hashes) == 2 and hashes[0] == hashes[1]
            else f"sha256 of the builds: {', '.join(h[:16] for h in hashes)}"
        )
        report.show(size)

        start = report.table(
            "Cold start and memory",
            ["command", "install", "median ms", "p95 ms", "peak RSS MiB"],
        )
        for what in (["--version"], ["--backends"]):
            for name, cmd in (("bundle", str(bundle)), ("venv", venv_cmd)):
                run_once([cmd, *what])  # the page cache holds the files from here on
                times = [run_once([cmd, *what]) for _ in range(runs)]
                rss = max(peak_rss([cmd, *what]) for _ in range(3))
                start.add(f"vmctl-boinc {' '.join(what)}", name, ms(median(times)), ms(p95(times)), mib(rss))
        start.note(f"{runs} fresh processes each; the one-file bundle unpacks itself into $TMPDIR at every start")
        report.show(start)
    report.finish()


if __name__ == "__main__":
    main()
