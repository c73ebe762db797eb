"""Screenshots on QEMU: what the VGA adapter costs at boot, and vm.screenshot() against raw QMP.

    .venv/bin/python benchmarks/bench_screenshot.py [--quick] [--json PATH]

1. Boot time. The test guest boots (kernel to its init's ``VMCTL-GUEST READY`` line on the
   serial console) under QEMU started by hand with the argv vmctl uses
   (``vmctl_qemu._command.qemu_argv``), without and with the display adapter vmctl's machines now
   get (``-device VGA``), alternating which goes first.
2. Latency. A vmctl machine and a QEMU started by hand with the same argv (VGA included) run
   side by side; each round takes ``vm.screenshot()`` (a new QMP connection, ``screendump`` as
   PNG into a private directory, a bounded read, the PNG header checked) and, on the raw QEMU,
   ``screendump`` as PNG to a file over one open QMP connection plus reading the file, alternating
   which goes first.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report, median, ms, p95, parse_args, ratio, timed

import vmctl
from vmctl.testguest import ensure_test_guest
from vmctl_qemu._command import qemu_argv
from vmctl_qemu._screenshot import DISPLAY_ARGV

READY = b"VMCTL-GUEST READY"


def raw_argv(directory: Path, spec: vmctl.MachineSpec, vga: bool) -> list[str]:
    argv = qemu_argv(
        spec,
        binary="qemu-system-x86_64",
        accel="tcg",
        machine_type="q35",
        disk=None,
        disk_format="qcow2",
        serial_log=directory / "console.log",
    )
    return argv + (list(DISPLAY_ARGV) if vga else [])


def boot_seconds(directory: Path, argv: list[str], timeout: float = 120) -> float:
    import subprocess

    log = directory / "console.log"
    log.unlink(missing_ok=True)
    for sock in ("qmp.sock", "state.sock"):
        (directory / sock).unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while READY not in (log.read_bytes() if log.exists() else b""):
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError("the raw QEMU did not boot")
            time.sleep(0.01)
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    args = parse_args(__doc__ or "")
    report = Report("screenshots on QEMU", args)
    guest = ensure_test_guest()
    rounds = 3 if args.quick else 7
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-screen-") as tmp:
        root = Path(tmp)
        spec = vmctl.MachineSpec(
            name="bench-screen", kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline, memory_mib=128
        )
        raw_dir = root / "raw"
        raw_dir.mkdir()
        plain, vga = raw_argv(raw_dir, spec, False), raw_argv(raw_dir, spec, True)
        boots: dict[str, list[float]] = {"no display adapter": [], "-device VGA": []}
        for i in range(rounds):
            order = [("no display adapter", plain), ("-device VGA", vga)]
            for label, argv in order if i % 2 == 0 else reversed(order):
                boots[label].append(boot_seconds(raw_dir, argv))
        table = report.table(f"boot to the guest's init ({rounds} boots each, TCG)", ["QEMU", "median", "p95"])
        for label, samples in boots.items():
            table.add(label, f"{median(samples):.2f} s", f"{p95(samples):.2f} s")
        report.show(table)

        import subprocess

        hv = vmctl.connect("qemu", state_dir=root / "state", accel="tcg")
        vm = hv.create(spec)
        loop = asyncio.new_event_loop()
        for sock in ("qmp.sock", "state.sock"):
            (raw_dir / sock).unlink(missing_ok=True)  # left by the last boot's QEMU
        raw = subprocess.Popen(vga, cwd=raw_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            vm.start()
            client = QMPClient("bench")
            deadline = time.monotonic() + 30
            while True:
                try:
                    loop.run_until_complete(client.connect(str(raw_dir / "qmp.sock")))
                    break
                except QMPError:
                    if time.monotonic() > deadline:
                        raise
                    client = QMPClient("bench")
                    time.sleep(0.01)
            target = raw_dir / "screen.png"

            def raw_shot() -> None:
                loop.run_until_complete(client.execute("screendump", {"filename": str(target), "format": "png"}))
                target.read_bytes()

            samples: dict[str, list[float]] = {"vm.screenshot()": [], "raw QMP screendump": []}
            for i in range(10 if args.quick else 40):
                pair = [("vm.screenshot()", vm.screenshot), ("raw QMP screendump", raw_shot)]
                for label, action in pair if i % 2 == 0 else reversed(pair):
                    samples[label].append(timed(action))
            table = report.table("screenshot latency (720x400 text screen)", ["path", "median", "p95", "vs raw"])
            base = median(samples["raw QMP screendump"])
            for label, values in samples.items():
                table.add(label, ms(median(values)), ms(p95(values)), ratio(median(values), base))
            table.note("vm.screenshot() opens a QMP connection per call (QEMU serves one client per socket)")
            report.show(table)
            loop.run_until_complete(client.disconnect())
        finally:
            raw.kill()
            raw.wait()
            vm.destroy()
            loop.close()
    report.finish()


if __name__ == "__main__":
    main()
