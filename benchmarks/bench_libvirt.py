"""vmctl's libvirt backend against the same calls made directly with libvirt-python.

    .venv/bin/python benchmarks/bench_libvirt.py [--quick] [--json PATH]

1. Verb latency: one running TCG test guest per path on qemu:///system (libvirtd is started with
   tests/services.py if it is not running). One is driven through vmctl, the other with
   libvirt-python over one open connection; pause, resume, state and usage run on both, one after
   the other, alternating which goes first, with median, p95 and the ratio of the medians.
2. usage_all() of 1, 10 and 50 defined domains (one bulk statistics call) against the raw bulk
   call (``getAllDomainStats``) and against asking each machine in turn through vmctl, on the test
   driver (test:///default, in-process) and on the real daemon (a round trip per call).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # for tests.services and the test guest helper

from benchlib import Report, ms, p95, parse_args, ratio, timed  # noqa: E402
from benchlib import median as med  # noqa: E402

import vmctl  # noqa: E402
from vmctl.tools import run_tool  # noqa: E402

BOOT_TIMEOUT = 120


def stats_flags() -> int:
    import libvirt

    return int(
        libvirt.VIR_DOMAIN_STATS_STATE
        | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
        | libvirt.VIR_DOMAIN_STATS_BALLOON
        | libvirt.VIR_DOMAIN_STATS_INTERFACE
        | libvirt.VIR_DOMAIN_STATS_BLOCK
    )


def wait_console(log: Path, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_bytes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {log} after {timeout} s")
        time.sleep(0.1)


# -- 1. verb latency -----------------------------------------------------------------------------
def bench_verbs(report: Report, rounds: int) -> None:
    import libvirt

    from tests.contract.harness_libvirt import readable_test_guest

    kernel, initrd, disk, cmdline = readable_test_guest()
    uri = "qemu:///system"
    hv = vmctl.connect("libvirt", uri=uri)
    conn = libvirt.open(uri)
    stats = stats_flags()
    made: list[vmctl.Machine] = []
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-libvirt-") as tmp:
        Path(tmp).chmod(0o755)
        stamp = int(time.time()) % 100000
        try:
            for who in ("vmctl", "raw"):
                made.append(
                    hv.create(
                        vmctl.MachineSpec(
                            name=f"bench-{who}-{stamp}",
                            disk=disk,
                            kernel=kernel,
                            initrd=initrd,
                            cmdline=cmdline,
                            memory_mib=128,
                            serial_log=Path(tmp) / f"{who}.log",
                        )
                    )
                )
            vm, other = made
            vm.start()
            other.start()
            dom = conn.lookupByName(other.name)
            for who in ("vmctl", "raw"):
                wait_console(Path(tmp) / f"{who}.log", b"VMCTL-GUEST READY", BOOT_TIMEOUT)
            ours: dict[str, Callable[[], Any]] = {
                "pause": vm.pause,
                "resume": vm.resume,
                "state": lambda: vm.state,
                "usage": vm.usage,
            }
            theirs: dict[str, Callable[[], Any]] = {
                "pause": dom.suspend,
                "resume": dom.resume,
                "state": dom.state,
                "usage": lambda: conn.domainListGetStats([dom], stats, 0),
            }
            for i in range(rounds):
                for j, verb in enumerate(ours):
                    steps = [("vmctl", ours[verb]), ("raw", theirs[verb])]
                    for who, action in steps[:: 1 if (i + j) % 2 == 0 else -1]:
                        samples.setdefault(f"{verb}/{who}", []).append(timed(action))
            assert vm.state is vmctl.State.RUNNING and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        finally:
            for machine in made:
                with contextlib.suppress(vmctl.VmctlError):
                    machine.destroy()
            conn.close()
            hv.close()
    table = report.table(
        "Verb latency on qemu:///system: vmctl against libvirt-python (interleaved, ms)",
        ["verb", "n", "vmctl median", "vmctl p95", "raw median", "raw p95", "ratio"],
    )
    for verb in ("pause", "resume", "state", "usage"):
        a, b = samples[f"{verb}/vmctl"], samples[f"{verb}/raw"]
        table.add(verb, len(a), ms(med(a)), ms(p95(a)), ms(med(b)), ms(p95(b)), ratio(med(a), med(b)))
    table.note(
        f"libvirt {libvirt_version()}, libvirt-python {_version('libvirt-python')}; two 128 MiB TCG test "
        "guests, booted and idle. raw = one open connection: virDomainSuspend/Resume, virDomainGetState, "
        "virConnectGetAllDomainStats for the one domain (state, CPU, balloon, interfaces, block)."
    )
    table.note(
        "vmctl per verb: the interface's state check against its transition table, then the same libvirt call "
        "(on a domain looked up by name)."
    )
    report.show(table)


# -- 2. bulk usage -------------------------------------------------------------------------------
def bench_bulk(report: Report, uri: str, counts: list[int], rounds: int, state_dir: Path | None = None) -> None:
    import libvirt

    stats = stats_flags()
    table = report.table(
        f"usage of N defined domains on {uri} (ms)",
        ["domains", "usage_all() median", "p95", "raw getAllDomainStats median", "p95", "ratio",
         "vmctl each in turn median", "p95"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-libvirt-bulk-") as tmp:
        base = Path(tmp) / "base.qcow2"
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], timeout=30)
        base.chmod(0o644)
        Path(tmp).chmod(0o755)
        hv = vmctl.connect("libvirt", uri=uri, state_dir=state_dir or Path(tmp) / "overlays")
        conn = libvirt.open(uri)
        made: list[vmctl.Machine] = []
        try:
            prefix = f"bulk{int(time.time()) % 100000}"
            for n in counts:
                while len(made) < n:
                    made.append(hv.create(vmctl.MachineSpec(name=f"{prefix}-{len(made)}", disk=base)))
                hv.usage_all()  # learn which domains are vmctl's once
                bulk: list[float] = []
                raw: list[float] = []
                for i in range(rounds):
                    steps: list[tuple[list[float], Callable[[], Any]]] = [
                        (bulk, hv.usage_all),
                        (raw, lambda: conn.getAllDomainStats(stats, 0)),
                    ]
                    for into, action in steps[:: 1 if i % 2 == 0 else -1]:
                        into.append(timed(action))
                each = [timed(lambda: [vm.usage() for vm in made]) for _ in range(max(3, rounds // 2))]
                table.add(
                    n, ms(med(bulk)), ms(p95(bulk)), ms(med(raw)), ms(p95(raw)), ratio(med(bulk), med(raw)),
                    ms(med(each)), ms(p95(each)),
                )  # fmt: skip
        finally:
            for vm in made:
                with contextlib.suppress(vmctl.VmctlError):
                    vm.destroy()
            conn.close()
            hv.close()
    table.note(
        "Defined, stopped domains (16 MiB qcow2 overlays, never started). usage_all() is one bulk "
        "statistics call plus vmctl's mapping of the results to its machines; raw = "
        "virConnectGetAllDomainStats over every domain of the connection; 'each in turn' = vm.usage() "
        "per machine through vmctl."
    )
    if uri == "test:///default":
        table.note("test:///default is libvirt's in-process mock driver: no daemon round trip.")
    report.show(table)


def libvirt_version() -> str:
    import libvirt

    v = libvirt.getVersion()
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def daemon_available(report: Report) -> bool:
    import libvirt

    try:
        libvirt.open("qemu:///system").close()
        return True
    except libvirt.libvirtError:
        pass
    from tests.contract.harness_libvirt import load_services

    try:
        load_services().ensure_libvirtd()
        libvirt.open("qemu:///system").close()
        return True
    except Exception as exc:  # a missing daemon skips those parts, with the reason
        report.note(f"qemu:///system parts skipped: libvirtd could not be reached or started ({exc}).")
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    report = Report("libvirt backend", args)
    try:
        import libvirt  # noqa: F401
    except ImportError:
        report.skip("libvirt-python is not installed")
    report.note(f"libvirt {libvirt_version()}, libvirt-python {_version('libvirt-python')}.")
    daemon = daemon_available(report)
    if daemon:
        bench_verbs(report, 30 if args.quick else 150)
    bench_bulk(report, "test:///default", [1, 10, 50], 10 if args.quick else 50)
    if daemon:
        bench_bulk(
            report, "qemu:///system", [1, 10, 50], 5 if args.quick else 20, Path("/var/lib/libvirt/images/vmctl")
        )
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
