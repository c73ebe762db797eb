"""``vmctl top``: a live table of state, CPU, memory and I/O rates."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from vmctl import display
from vmctl.errors import MachineNotFound
from vmctl.interface import Hypervisor
from vmctl.types import State, Usage

from ._base import EXIT_OK, _UsageError

_TOP_HEADERS = ("NAME", "STATE", "CPU%", "MEMORY", "DISK READ", "DISK WRITE", "NET RX", "NET TX")


def _sample(hv: Hypervisor) -> dict[str, tuple[State, Usage | None]]:
    states: dict[str, State] = {}
    for vm in hv.machines():
        try:
            states[vm.name] = vm.state
        except MachineNotFound:
            continue
    try:
        usages: dict[str, Usage] = dict(hv.usage_all())
    except MachineNotFound:  # one vanished between the two calls: measure the rest one by one
        usages = {}
        for name in states:
            try:
                usages[name] = hv.machine(name).usage()
            except MachineNotFound:
                continue
    return {name: (state, usages.get(name)) for name, state in states.items()}


def _top_rows(
    before: dict[str, tuple[State, Usage | None]], after: dict[str, tuple[State, Usage | None]]
) -> list[dict[str, Any]]:
    rows = []
    for name, (state, usage) in sorted(after.items()):
        prev = before.get(name, (State.UNKNOWN, None))[1]
        rates = display.usage_rates(prev, usage) if usage is not None else display.usage_rates(None, Usage(name))
        rows.append(
            {
                "name": name,
                "state": state.value,
                "memory_bytes": usage.memory_bytes if usage is not None else None,
                **rates,
            }
        )
    return rows


def _top_frame(hv: Hypervisor, rows: list[dict[str, Any]], interval: float) -> list[str]:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    running = sum(1 for r in rows if r["state"] == State.RUNNING.value)
    count = f"{len(rows)} machine" + ("" if len(rows) == 1 else "s")
    head = f"vmctl top - {hv.name} - {count}, {running} running - {stamp} - every {interval:g} s"
    table = display.text_table(
        _TOP_HEADERS,
        [
            [
                r["name"],
                r["state"],
                "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}",
                display.format_bytes(r["memory_bytes"]),
                display.format_rate(r["disk_read_rate"]),
                display.format_rate(r["disk_write_rate"]),
                display.format_rate(r["net_rx_rate"]),
                display.format_rate(r["net_tx_rate"]),
            ]
            for r in rows
        ],
        right=range(2, 8),
    )
    return [head, "", *table.splitlines()]


def _cmd_top(args: argparse.Namespace, hv: Hypervisor) -> int:
    if args.interval <= 0:
        raise _UsageError("--interval must be positive")
    tty = sys.stdout.isatty() and not args.json
    out = sys.stdout

    def draw(lines: list[str]) -> None:
        if tty:
            width = shutil.get_terminal_size((100, 24)).columns
            out.write("\x1b[H" + "".join(line[:width] + "\x1b[K\n" for line in lines) + "\x1b[J")
        else:
            out.write("\n".join(lines) + "\n\n")
        out.flush()

    previous = _sample(hv)
    shown = 0
    try:
        if tty:
            out.write("\x1b[?25l\x1b[2J")
            draw(_top_frame(hv, _top_rows({}, previous), args.interval))
        while True:
            time.sleep(args.interval)
            current = _sample(hv)
            rows = _top_rows(previous, current)
            if args.json:
                out.write(json.dumps({"time": time.time(), "backend": hv.name, "machines": rows}) + "\n")
                out.flush()
            else:
                draw(_top_frame(hv, rows, args.interval))
            shown += 1
            if args.iterations and shown >= args.iterations:
                return EXIT_OK
            previous = current
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if tty:
            out.write("\x1b[?25h")
            out.flush()
