"""``vmctl import FILE``: a machine from an OVF appliance (``.ova`` or ``.ovf``)."""

from __future__ import annotations

import argparse
from typing import Any

from vmctl.interface import Hypervisor

from ._base import EXIT_OK, _out, _progress, _timeout
from ._commands import _forward, _size_mib


def add_import_parser(sub: Any, timeout_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import", parents=[timeout_parent], help="create a machine from an OVF appliance (.ova, or .ovf with its disks)"
    )
    p.add_argument("file", metavar="FILE", help="the .ova file, or the .ovf descriptor with its disk files beside it")
    p.add_argument("--name", help="machine name (default: the appliance's own name)")
    p.add_argument("--memory", help="memory instead of the appliance's: 512, 512M or 2G (MiB by default)")
    p.add_argument("--cpus", type=int, help="number of virtual CPUs instead of the appliance's")
    p.add_argument("--kernel", help="boot this kernel directly (a disk without a boot loader)")
    p.add_argument("--initrd", help="initial ramdisk for --kernel")
    p.add_argument("--cmdline", help="kernel command line")
    p.add_argument("--forward", action="append", metavar="HOST:GUEST[/udp]", help="forward 127.0.0.1:HOST to GUEST")
    p.add_argument("--serial-log", help="append the serial console to this file")
    p.add_argument("--start", action="store_true", help="start the machine once imported")
    p.set_defaults(handler=_cmd_import)


def _cmd_import(args: argparse.Namespace, hv: Hypervisor) -> int:
    flags: dict[str, Any] = {
        "kernel": args.kernel,
        "initrd": args.initrd,
        "cmdline": args.cmdline,
        "cpus": args.cpus,
        "serial_log": args.serial_log,
        "memory_mib": None if args.memory is None else _size_mib(args.memory),
    }
    spec = {k: v for k, v in flags.items() if v is not None}
    if args.forward:
        spec["network"] = {"port_forwards": [_forward(f) for f in args.forward]}
    with _progress(args, f"import {args.file}"):
        vm = hv.import_appliance(args.file, args.name, **spec, **_timeout(args))
    if args.start:
        with _progress(args, f"start {vm.name}"):
            vm.start(**_timeout(args))
    _out(f"{vm.name}: imported ({vm.state.value})")
    return EXIT_OK
