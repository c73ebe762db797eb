"""vmctl's libvirt backend against the same calls made directly with libvirt-python.

Part 1 drives one running TCG test guest on qemu:///system (libvirtd is started if needed) and
times pause, resume, state and usage through vmctl and through libvirt-python, interleaved in
one run, and prints median, p95 and the overhead ratio (vmctl median / raw median).

Part 2 defines 1, 10 and 50 domains and times ``hv.usage_all()`` (one bulk statistics call)
against asking each machine in turn, on the test driver (test:///default, in-process) and on the
real daemon (a round trip per call over its socket).

Run: ``.venv/bin/python benchmarks/bench_libvirt.py [--rounds N] [--skip-daemon]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.services and the test guest helper

import libvirt  # noqa: E402

import vmctl  # noqa: E402
from vmctl.tools import run_tool  # noqa: E402

STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def row(label: str, ours: list[float], raw: list[float]) -> str:
    m_ours, m_raw = statistics.median(ours), statistics.median(raw)
    return (
        f"| {label:<10} | {m_ours:9.3f} | {p95(ours):9.3f} | {m_raw:9.3f} | {p95(raw):9.3f} | {m_ours / m_raw:6.2f} |"
    )


def header(first: str, a: str, b: str) -> list[str]:
    return [
        f"| {first:<10} | {a + ' med':>9} | {a + ' p95':>9} | {b + ' med':>9} | {b + ' p95':>9} | {'ratio':>6} |",
        "|------------|-----------|-----------|-----------|-----------|--------|",
    ]


def bench_verbs(rounds: int) -> None:
    from tests.contract.harness_libvirt import load_services, readable_test_guest

    load_services().ensure_libvirtd()
    kernel, initrd, disk, cmdline = readable_test_guest()
    uri = "qemu:///system"
    hv = vmctl.connect("libvirt", uri=uri)
    raw = libvirt.open(uri)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench-{int(time.time())}"
        vm = hv.create(
            vmctl.MachineSpec(
                name=name, disk=disk, kernel=kernel, initrd=initrd, cmdline=cmdline, serial_log=Path(tmp) / "serial.log"
            )
        )
        try:
            vm.start()
            dom = raw.lookupByName(name)
            results: dict[str, tuple[list[float], list[float]]] = {
                k: ([], []) for k in ("pause", "resume", "state", "usage")
            }
            for _ in range(rounds):
                results["pause"][0].append(timed(vm.pause))
                results["resume"][0].append(timed(vm.resume))
                results["pause"][1].append(timed(dom.suspend))
                results["resume"][1].append(timed(dom.resume))
                results["state"][0].append(timed(lambda: vm.state))
                results["state"][1].append(timed(dom.state))
                results["usage"][0].append(timed(vm.usage))
                results["usage"][1].append(timed(lambda: raw.domainListGetStats([dom], STATS, 0)))
            print(f"\nVerbs on {uri}, one running TCG guest, {rounds} rounds, milliseconds:\n")
            print("\n".join(header("verb", "vmctl", "raw")))
            for verb, (ours, theirs) in results.items():
                print(row(verb, ours, theirs))
        finally:
            vm.destroy()
            raw.close()
            hv.close()


def bench_bulk(uri: str, counts: list[int], rounds: int, state_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.qcow2"
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], timeout=30)
        base.chmod(0o644)
        Path(tmp).chmod(0o755)
        options: dict[str, object] = {"uri": uri}
        if state_dir is not None:
            options["state_dir"] = state_dir
        else:
            options["state_dir"] = Path(tmp) / "overlays"
        hv = vmctl.connect("libvirt", **options)
        made: list[vmctl.Machine] = []
        print(f"\nUsage of N defined domains on {uri}, {rounds} rounds, milliseconds:\n")
        print("\n".join(header("domains", "bulk", "each")))
        try:
            prefix = f"bulk{int(time.time()) % 100000}"
            for n in counts:
                while len(made) < n:
                    made.append(hv.create(vmctl.MachineSpec(name=f"{prefix}-{len(made)}", disk=base)))
                hv.usage_all()  # learn which domains are vmctl's once
                bulk = [timed(hv.usage_all) for _ in range(rounds)]
                each = [timed(lambda: [vm.usage() for vm in made]) for _ in range(rounds)]
                print(row(str(n), bulk, each))
        finally:
            for vm in made:
                vm.destroy()
            hv.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--skip-daemon", action="store_true", help="only the test driver (no libvirtd, no guest)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(f"libvirt {libvirt.getVersion()}, libvirt-python {libvirt_python_version()}")
    if not args.skip_daemon:
        bench_verbs(args.rounds)
    bench_bulk("test:///default", [1, 10, 50], args.rounds)
    if not args.skip_daemon:
        bench_bulk("qemu:///system", [1, 10, 50], max(5, args.rounds // 5), Path("/var/lib/libvirt/images/vmctl"))
    return 0


def libvirt_python_version() -> str:
    from importlib.metadata import version

    return version("libvirt-python")


if __name__ == "__main__":
    raise SystemExit(main())
