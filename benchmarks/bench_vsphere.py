"""vmctl's vSphere backend against the same calls made directly with pyvmomi, on vcsim.

    .venv/bin/python benchmarks/bench_vsphere.py [--quick] [--json PATH]

vcsim (VMware's vCenter simulator, built and started by ``tests/vcsim.py``) serves on 127.0.0.1
over TLS. Two VMs are created through vmctl; one is driven through vmctl, the other with pyvmomi
directly over its own session (the "raw" path: the task method, then pyVim's ``WaitForTask``;
state and usage through one ``RetrievePropertiesEx`` of the same properties, plus the same
``QueryPerf`` as vmctl for usage). Each round runs state, power on, snapshot (with memory),
suspend, power on (resume), usage and power off on both, one verb on one VM and then on the
other, alternating which goes first. vcsim runs no guest and answers in microseconds of
work: the figures are vmctl's overhead over pyvmomi, not a vCenter's latency.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import secrets
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # for tests.vcsim

from benchlib import Report, ms, p95, parse_args, ratio, timed  # noqa: E402
from benchlib import median as med  # noqa: E402

import vmctl  # noqa: E402

VERBS = ("state", "start", "snapshot", "suspend", "start-resume", "usage", "poweroff")
USAGE_COUNTERS = (
    "cpu.used.summation",
    "disk.read.average",
    "disk.write.average",
    "net.received.average",
    "net.transmitted.average",
    "mem.consumed.average",
)


class RawVm:
    """One VM driven with pyvmomi over a session of its own."""

    def __init__(self, host: str, port: int, user: str, password: str, ca_file: Path, name: str) -> None:
        from pyVim.connect import SmartConnect
        from pyVmomi import vim

        self.vim = vim
        context = ssl.create_default_context(cafile=str(ca_file))
        self.si = SmartConnect(host=host, port=port, user=user, pwd=password, sslContext=context)
        content = self.si.RetrieveContent()
        self.content = content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            self.vm = next(v for v in view.view if v.name == name)
        finally:
            view.Destroy()
        by_name = {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key for c in content.perfManager.perfCounter}
        self.counters = [by_name[c] for c in USAGE_COUNTERS if c in by_name]

    def props(self, paths: list[str]) -> dict[str, Any]:
        pc = self.vim.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=self.vm, skip=False)],
            propSet=[pc.PropertySpec(type=self.vim.VirtualMachine, pathSet=paths, all=False)],
        )
        result = self.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        return {p.name: p.val for o in (result.objects if result else ()) for p in o.propSet or ()}

    def task(self, start: Callable[[], Any]) -> None:
        from pyVim.task import WaitForTask

        WaitForTask(start(), si=self.si)

    def state(self) -> str:
        return str(self.props(["runtime.powerState", "runtime.connectionState"])["runtime.powerState"])

    def usage(self) -> None:
        p = self.props(["runtime.powerState", "summary.runtime.bootTime", "summary.quickStats.hostMemoryUsage"])
        boot = p.get("summary.runtime.bootTime")
        if p.get("runtime.powerState") != "poweredOn" or boot is None:
            return
        now = datetime.datetime.now(datetime.UTC)
        spec = self.vim.PerformanceManager.QuerySpec(
            entity=self.vm,
            metricId=[self.vim.PerformanceManager.MetricId(counterId=k, instance="") for k in self.counters],
            intervalId=20,
            maxSample=180,
            startTime=max(boot, now - datetime.timedelta(seconds=3600)),
            format="normal",
        )
        self.content.perfManager.QueryPerf([spec])

    def close(self) -> None:
        from pyVim.connect import Disconnect

        with contextlib.suppress(Exception):
            Disconnect(self.si)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    report = Report("vSphere backend against pyvmomi on vcsim", args)
    try:
        import pyVmomi  # noqa: F401

        from tests.vcsim import Vcsim, VcsimError, build_vcsim
    except ImportError as exc:
        report.skip(f"pyvmomi or tests/vcsim.py not importable: {exc}")
    try:
        build_vcsim()
    except VcsimError as exc:
        report.skip(f"vcsim cannot be built here: {exc}")
    rounds = 50 if args.quick else 300
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-vsphere-") as tmp_name:
        tmp = Path(tmp_name)
        password = secrets.token_urlsafe(16)
        password_file = tmp / "password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        disk = tmp / "base.img"
        disk.write_bytes(b"\0" * (1 << 20))
        server = Vcsim(username="vmctl", password=password)
        server.start()
        made: list[vmctl.Machine] = []
        raw: RawVm | None = None
        hv: vmctl.Hypervisor | None = None
        try:
            assert server.cert_file is not None
            hv = vmctl.connect(
                "vsphere",
                host=server.host,
                port=server.port,
                user="vmctl",
                password_file=password_file,
                ca_file=server.cert_file,
                folder="vmctl-bench",
                timeout=30,
            )
            for name in ("bench-vmctl", "bench-raw"):
                made.append(hv.create(vmctl.MachineSpec(name=name, disk=disk)))
            vm = made[0]
            raw = RawVm(server.host, server.port, "vmctl", password, server.cert_file, "bench-raw")
            r = raw
            ours: dict[str, Callable[[int], Any]] = {
                "state": lambda i: vm.state,
                "start": lambda i: vm.start(),
                "snapshot": lambda i: vm.snapshot(f"s{i}"),
                "suspend": lambda i: vm.suspend(),
                "start-resume": lambda i: vm.start(),
                "usage": lambda i: vm.usage(),
                "poweroff": lambda i: vm.poweroff(),
            }
            theirs: dict[str, Callable[[int], Any]] = {
                "state": lambda i: r.state(),
                "start": lambda i: r.task(r.vm.PowerOnVM_Task),
                "snapshot": lambda i: r.task(
                    lambda: r.vm.CreateSnapshot_Task(name=f"s{i}", description="", memory=True, quiesce=False)
                ),
                "suspend": lambda i: r.task(r.vm.SuspendVM_Task),
                "start-resume": lambda i: r.task(r.vm.PowerOnVM_Task),
                "usage": lambda i: r.usage(),
                "poweroff": lambda i: r.task(r.vm.PowerOffVM_Task),
            }
            samples: dict[str, list[float]] = {}
            for i in range(rounds):
                for j, verb in enumerate(VERBS):
                    steps = [("vmctl", ours[verb]), ("raw", theirs[verb])]
                    for who, action in steps[:: 1 if (i + j) % 2 == 0 else -1]:
                        samples.setdefault(f"{verb}/{who}", []).append(timed(functools.partial(action, i)))
            assert vm.state is vmctl.State.STOPPED and raw.state() == "poweredOff"
        finally:
            if raw is not None:
                raw.close()
            for machine in made:
                with contextlib.suppress(vmctl.VmctlError):
                    machine.destroy()
            if hv is not None:
                hv.close()
            server.stop()

    table = report.table(
        "Verb latency: vmctl against raw pyvmomi on vcsim (interleaved, ms)",
        ["verb", "n", "vmctl median", "vmctl p95", "raw median", "raw p95", "ratio"],
    )
    for verb in VERBS:
        a, b = samples[f"{verb}/vmctl"], samples[f"{verb}/raw"]
        table.add(verb, len(a), ms(med(a)), ms(p95(a)), ms(med(b)), ms(p95(b)), ratio(med(a), med(b)))
    table.note(
        "The server is vcsim (govmomi's vCenter simulator, model vpx, TLS on 127.0.0.1), not a vCenter: "
        "no guest runs and tasks finish at once, so these figures are vmctl's overhead over pyvmomi."
    )
    table.note(
        "raw = the task method and pyVim.task.WaitForTask (which waits with WaitForUpdates); vmctl polls the "
        "task's info with RetrievePropertiesEx (at once, then after 10 ms, growing) and, since vcsim finishes tasks at "
        "once, usually needs one poll; WaitForTask's filter set-up and teardown cost more round trips. "
        "usage = the same properties and QueryPerf on both paths."
    )
    table.note(
        f"{rounds} rounds; each round: state, power on, snapshot with memory, suspend, power on (resume), "
        "usage, power off. Snapshots accumulate (one per round) on both VMs."
    )
    report.show(table)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
