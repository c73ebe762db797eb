"""The argument parser of the ``vmctl`` command and the handler of each command."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import vmctl
from vmctl.interface import Hypervisor

from ._base import DEFAULT_BACKEND, ENV_BACKEND, ENV_OPTIONS, _ArgumentParser
from ._commands import (
    _cmd_create,
    _cmd_destroy,
    _cmd_list,
    _cmd_restart,
    _cmd_screenshot,
    _cmd_show,
    _cmd_snapshot,
    _cmd_usage,
    _verb,
)
from ._import import add_import_parser
from ._top import _cmd_top


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vmctl`` command."""
    parser = _ArgumentParser(
        prog="vmctl",
        description="One lifecycle interface for virtual machines on any hypervisor.",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 invalid state, 5 timeout, "
        "6 backend error, 7 unsupported, 8 backend unavailable, 9 invalid spec, 10 already exists, "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"vmctl {vmctl.__version__}")
    parser.add_argument(
        "-b",
        "--backend",
        default=os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND,
        help=f"backend to use (default: ${ENV_BACKEND} or {DEFAULT_BACKEND}); see 'vmctl backends'",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a backend option such as state_dir=DIR, accel=tcg or uri=qemu:///system (repeatable; "
        f"added to ${ENV_OPTIONS})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what vmctl does to stderr")
    parser.add_argument("--debug", action="store_true", help="debug logging, and a traceback on errors")
    parser.add_argument("--no-progress", action="store_true", help="never show progress (also: VMCTL_PROGRESS=0)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    sub.required = True

    json_parent = _ArgumentParser(add_help=False)
    json_parent.add_argument("--json", action="store_true", help="print JSON for scripts")
    timeout_parent = _ArgumentParser(add_help=False)
    timeout_parent.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds to wait at most")

    sub.add_parser("backends", parents=[json_parent], help="list installed backends and whether they work here")
    p = sub.add_parser("list", aliases=["ls"], parents=[json_parent], help="list machines")
    p.add_argument(
        "-a", "--all", action="store_true", help="also the hypervisor's machines vmctl did not create (adopted)"
    )
    p = sub.add_parser("show", parents=[json_parent], help="describe one machine")
    p.add_argument("name")

    p = sub.add_parser("create", parents=[timeout_parent], help="define a machine (from flags or a TOML spec)")
    p.add_argument("name", nargs="?", help="machine name (or 'name' in the spec file)")
    p.add_argument("--spec", metavar="FILE.toml", help="a TOML file of MachineSpec fields; flags override it")
    p.add_argument("--disk", help="base disk image (never modified with the default overlay)")
    p.add_argument(
        "--no-overlay", dest="overlay", action="store_false", default=None, help="write to the disk image itself"
    )
    p.add_argument("--memory", help="memory: 512, 512M or 2G (MiB by default)")
    p.add_argument("--cpus", type=int, help="number of virtual CPUs")
    p.add_argument("--kernel", help="boot this kernel directly")
    p.add_argument("--initrd", help="initial ramdisk for --kernel")
    p.add_argument("--cmdline", help="kernel command line")
    net = p.add_mutually_exclusive_group()
    net.add_argument("--network", dest="network", action="store_true", default=None, help="user-mode NAT network")
    net.add_argument("--no-network", dest="network", action="store_false", help="no network (the default)")
    p.add_argument("--forward", action="append", metavar="HOST:GUEST[/udp]", help="forward 127.0.0.1:HOST to GUEST")
    p.add_argument("--share", action="append", metavar="TAG=DIR", help="share a host directory as TAG")
    p.add_argument("--serial-log", help="append the serial console to this file")
    p.add_argument("--start", action="store_true", help="start the machine once created")

    verbs = {
        "start": "boot a stopped or crashed machine, or restore a suspended one",
        "stop": "shut down gracefully (ACPI), forcing power off at the timeout",
        "poweroff": "power off at once (discards a suspended machine's saved state)",
        "pause": "freeze a running machine in memory",
        "resume": "continue a paused machine",
        "suspend": "save the machine's state to disk and release its memory",
    }
    for verb, text in verbs.items():
        p = sub.add_parser(verb, parents=[timeout_parent], help=text)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.set_defaults(handler=_verb(verb))

    p = sub.add_parser("restart", parents=[timeout_parent], help="reboot gracefully, or reset with --hard")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--hard", action="store_true", help="reset at once instead of a graceful reboot")

    p = sub.add_parser("snapshot", help="take, list, revert to or delete snapshots")
    snap = p.add_subparsers(dest="snapshot_command", metavar="ACTION", parser_class=_ArgumentParser)
    snap.required = True
    q = snap.add_parser("take", parents=[timeout_parent], help="take a snapshot (with memory if running)")
    q.add_argument("name")
    q.add_argument("snapshot")
    q.add_argument("-d", "--description", default="")
    q = snap.add_parser("list", aliases=["ls"], parents=[json_parent], help="list snapshots, oldest first")
    q.add_argument("name")
    q.set_defaults(snapshot_command="list")
    for action, text in (("revert", "return to a snapshot"), ("delete", "delete a snapshot")):
        q = snap.add_parser(action, parents=[timeout_parent], help=text)
        q.add_argument("name")
        q.add_argument("snapshot")

    add_import_parser(sub, timeout_parent)
    p = sub.add_parser("screenshot", parents=[timeout_parent], help="save the guest's screen as a PNG")
    p.add_argument("name")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write the PNG (default: NAME.png in the current directory; - for standard output)",
    )

    p = sub.add_parser("usage", parents=[json_parent], help="resource usage of machines (all by default)")
    p.add_argument("names", nargs="*", metavar="NAME")

    p = sub.add_parser("destroy", parents=[timeout_parent], help="delete machines with their disks and snapshots")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--delete-disks",
        action="store_true",
        help="also delete the disk images of an adopted machine (vmctl did not make them; kept by default)",
    )

    p = sub.add_parser("top", parents=[json_parent], help="live table of state, CPU, memory and I/O rates")
    p.add_argument("-n", "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0, metavar="N", help="stop after N refreshes (0: never)")
    return parser


_HANDLERS: dict[str, Callable[[argparse.Namespace, Hypervisor], int]] = {
    "list": _cmd_list,
    "ls": _cmd_list,
    "show": _cmd_show,
    "create": _cmd_create,
    "restart": _cmd_restart,
    "snapshot": _cmd_snapshot,
    "screenshot": _cmd_screenshot,
    "usage": _cmd_usage,
    "destroy": _cmd_destroy,
    "top": _cmd_top,
}
