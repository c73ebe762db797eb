"""The ``vmctl`` command: every lifecycle verb from a terminal or a script.

Global options come before the command::

    vmctl [--backend NAME] [--option KEY=VALUE]... [--debug] [-v] [--no-progress] COMMAND ...

``--backend`` defaults to ``$VMCTL_BACKEND``, else ``qemu``. Backend options (the keyword
arguments of :func:`vmctl.connect`, such as ``state_dir``, ``accel`` or ``uri``) come from
``$VMCTL_OPTIONS`` (``KEY=VALUE`` items separated by spaces, quoted as in a shell) and then from
each ``--option KEY=VALUE``, which wins. A value ``true`` or ``false`` becomes a boolean and a
value of decimal digits an integer; every other value is a string.

Commands: ``backends``, ``list``, ``show``, ``create``, ``start``, ``stop``, ``poweroff``,
``pause``, ``resume``, ``suspend``, ``restart``, ``snapshot take|list|revert|delete``, ``usage``,
``destroy`` and ``top``. The listing commands (``backends``, ``list``, ``show``, ``snapshot
list``, ``usage``, ``top``) take ``--json``.

An error is printed as one line on stderr (``vmctl: error: ...``); ``--debug`` adds the traceback
and debug logging. The exit status says what went wrong:

| code | meaning |
|---|---|
| 0 | success |
| 1 | an unexpected error (a bug: run again with ``--debug`` and report it) |
| 2 | the command line is wrong (unknown command, missing argument, bad option) |
| 3 | not found: no machine or snapshot of that name (`MachineNotFound`, `SnapshotNotFound`) |
| 4 | the machine's state does not allow the verb (`InvalidState`) |
| 5 | a deadline passed (`OperationTimeout`) |
| 6 | the hypervisor or its tool failed (`BackendError`) |
| 7 | the backend cannot do this verb at all (`Unsupported`) |
| 8 | the backend cannot be used here (`BackendUnavailable`) |
| 9 | an invalid name, path, value or spec file (`InvalidSpec`) |
| 10 | a machine of that name already exists (`MachineExists`) |
| 130 | interrupted (Ctrl-C) |

>>> main(["--backend", "memory", "--option", "namespace=cli-doctest", "list", "--json"])
[]
0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import vmctl
from vmctl import display
from vmctl.errors import (
    BackendError,
    BackendUnavailable,
    InvalidSpec,
    InvalidState,
    MachineExists,
    MachineNotFound,
    OperationTimeout,
    SnapshotNotFound,
    Unsupported,
    VmctlError,
)
from vmctl.interface import Hypervisor, Machine
from vmctl.progress import Progress
from vmctl.types import MachineSpec, State, Usage

__all__ = ["EXIT_CODES", "build_parser", "main", "parse_options"]

log = logging.getLogger("vmctl.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Exit status for each error class; the first matching entry wins (subclasses come first).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (MachineNotFound, 3),
    (SnapshotNotFound, 3),
    (InvalidState, 4),
    (OperationTimeout, 5),
    (BackendError, 6),
    (Unsupported, 7),
    (BackendUnavailable, 8),
    (InvalidSpec, 9),
    (MachineExists, 10),
    (VmctlError, EXIT_ERROR),
)

ENV_BACKEND = "VMCTL_BACKEND"
ENV_OPTIONS = "VMCTL_OPTIONS"
DEFAULT_BACKEND = "qemu"


class _UsageError(Exception):
    """A command line that argparse accepted but that makes no sense (exit 2)."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        """One line instead of argparse's usage block and ``sys.exit(2)``."""
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# -- options ---------------------------------------------------------------------------------------
def _convert(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    if value.isdigit():
        return int(value)
    return value


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to connect() keyword arguments.

    >>> parse_options(["state_dir=/srv/vms", "port=8989", "insecure=true"])
    {'state_dir': '/srv/vms', 'port': 8989, 'insecure': True}
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise _UsageError(f"backend option {item!r} is not KEY=VALUE")
        options[key] = _convert(value)
    return options


def _backend_options(cli_items: Sequence[str]) -> dict[str, Any]:
    env = os.environ.get(ENV_OPTIONS, "")
    try:
        env_items = shlex.split(env)
    except ValueError as exc:
        raise _UsageError(f"${ENV_OPTIONS} cannot be parsed: {exc}") from None
    options = parse_options(env_items)
    options.update(parse_options(cli_items))
    return options


# -- output helpers -----------------------------------------------------------------------------------
def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _json(data: Any) -> None:
    _out(json.dumps(data, indent=2, sort_keys=False, default=str))


@contextmanager
def _progress(args: argparse.Namespace, description: str) -> Iterator[Progress]:
    # Only operations that take a while show a spinner, and it is erased when they end: the
    # result line on stdout is what stays.
    with Progress(description, enabled=False if args.no_progress else None, delay=0.5, leave=False) as bar:
        yield bar


def _timeout(args: argparse.Namespace) -> dict[str, Any]:
    """``timeout=`` for a verb when ``--timeout`` was given; else the verb's own default."""
    timeout = getattr(args, "timeout", None)
    return {} if timeout is None else {"timeout": timeout}


def _machine_dict(vm: Machine) -> dict[str, Any]:
    spec = vm.spec
    return {
        "name": vm.name,
        "backend": vm.hypervisor.name,
        "state": vm.state.value,
        "pid": vm.pid,
        "cpus": spec.cpus,
        "memory_mib": spec.memory_mib,
    }


# -- commands ------------------------------------------------------------------------------------------
def _cmd_backends(args: argparse.Namespace) -> int:
    infos = vmctl.backends()
    if args.json:
        _json([i.to_dict() for i in infos])
        return EXIT_OK
    rows = []
    for info in infos:
        note = info.description if info.usable else f"{info.reason}" + (f" (install: {info.hint})" if info.hint else "")
        rows.append([info.name, "yes" if info.usable else "no", note])
    _out(display.text_table(["BACKEND", "USABLE", "DESCRIPTION"], rows))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, hv: Hypervisor) -> int:
    vms = hv.machines()
    if args.json:
        items = []
        for vm in vms:
            try:
                items.append(_machine_dict(vm))
            except MachineNotFound:  # destroyed meanwhile
                continue
        _json(items)
    else:
        _out(display.machines_text(vms))
    return EXIT_OK


def _cmd_show(args: argparse.Namespace, hv: Hypervisor) -> int:
    vm = hv.machine(args.name)
    snapshots = vm.snapshots() if hv.capabilities.snapshots else None
    if args.json:
        data = _machine_dict(vm)
        data["spec"] = vm.spec.to_dict()
        data["capabilities"] = hv.capabilities.to_dict()
        data["snapshots"] = None if snapshots is None else [s.to_dict() for s in snapshots]
        _json(data)
        return EXIT_OK
    _out(display.machine_text(vm))
    if snapshots:
        _out()
        _out(display.snapshots_text(snapshots))
    return EXIT_OK


def _size_mib(text: str) -> int:
    """``512``, ``512M``, ``2G`` or ``2GiB`` to MiB."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    if t.endswith("G"):
        factor, t = 1024, t[:-1]
    elif t.endswith("M"):
        t = t[:-1]
    if not t.isdigit():
        raise InvalidSpec("memory", f"{text!r} is not a size in MiB (512, 512M, 2G)")
    return int(t) * factor


def _forward(text: str) -> dict[str, Any]:
    """``HOST:GUEST`` or ``HOST:GUEST/udp`` to a port forward table."""
    ports, _, proto = text.partition("/")
    host, sep, guest = ports.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit():
        raise InvalidSpec("port forward", f"{text!r} is not HOST_PORT:GUEST_PORT[/tcp|udp]")
    return {"host_port": int(host), "guest_port": int(guest), "protocol": proto or "tcp"}


_PATH_KEYS = ("disk", "kernel", "initrd", "serial_log")


def _load_spec_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidSpec("spec file", f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSpec("spec file", f"{path} is not valid TOML: {exc}") from None
    base = path.resolve().parent
    for key in _PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = str(base / Path(data[key]).expanduser())
    if isinstance(data.get("shared_dirs"), dict):
        data["shared_dirs"] = {
            tag: str(base / Path(d).expanduser()) if isinstance(d, str) else d for tag, d in data["shared_dirs"].items()
        }
    return data


def _cmd_create(args: argparse.Namespace, hv: Hypervisor) -> int:
    data: dict[str, Any] = _load_spec_file(Path(args.spec)) if args.spec else {}
    if args.name is not None:
        data["name"] = args.name
    flags: dict[str, Any] = {
        "disk": args.disk,
        "kernel": args.kernel,
        "initrd": args.initrd,
        "cmdline": args.cmdline,
        "cpus": args.cpus,
        "serial_log": args.serial_log,
        "memory_mib": None if args.memory is None else _size_mib(args.memory),
        "overlay": args.overlay,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.forward:
        data["network"] = {"port_forwards": [_forward(f) for f in args.forward]}
    elif args.network is not None:
        data["network"] = args.network
    if args.share:
        shares = dict(data.get("shared_dirs") or {})
        for item in args.share:
            tag, sep, directory = item.partition("=")
            if not sep:
                raise InvalidSpec("share", f"{item!r} is not TAG=DIRECTORY")
            shares[tag] = directory
        data["shared_dirs"] = shares
    if "name" not in data:
        raise _UsageError("create needs a NAME (or a 'name' in the spec file)")
    spec = MachineSpec.from_dict(data)
    with _progress(args, f"create {spec.name}"):
        vm = hv.create(spec)
    if args.start:
        with _progress(args, f"start {vm.name}"):
            vm.start(**_timeout(args))
    _out(f"{vm.name}: created ({vm.state.value})")
    return EXIT_OK


def _verb(name: str) -> Callable[[argparse.Namespace, Hypervisor], int]:
    def run(args: argparse.Namespace, hv: Hypervisor) -> int:
        for machine in args.names:
            vm = hv.machine(machine)
            with _progress(args, f"{name} {vm.name}"):
                result = getattr(vm, name)(**_timeout(args))
            note = ""
            if name == "stop":
                note = " (graceful)" if result else " (forced: the guest ignored the power button)"
            _out(f"{vm.name}: {vm.state.value}{note}")
        return EXIT_OK

    return run


def _cmd_restart(args: argparse.Namespace, hv: Hypervisor) -> int:
    for machine in args.names:
        vm = hv.machine(machine)
        with _progress(args, f"restart {vm.name}"):
            graceful = vm.restart(hard=args.hard, **_timeout(args))
        how = "graceful reboot" if graceful else "hard reset"
        _out(f"{vm.name}: {vm.state.value} ({how})")
    return EXIT_OK


def _cmd_destroy(args: argparse.Namespace, hv: Hypervisor) -> int:
    for machine in args.names:
        vm = hv.machine(machine)
        with _progress(args, f"destroy {vm.name}"):
            vm.destroy(**_timeout(args))
        _out(f"{vm.name}: destroyed")
    return EXIT_OK


def _cmd_snapshot(args: argparse.Namespace, hv: Hypervisor) -> int:
    vm = hv.machine(args.name)
    kwargs = _timeout(args)
    if args.snapshot_command == "list":
        snaps = vm.snapshots()
        if args.json:
            _json([s.to_dict() for s in snaps])
        else:
            _out(display.snapshots_text(snaps))
        return EXIT_OK
    if args.snapshot_command == "take":
        with _progress(args, f"snapshot {vm.name}"):
            snap = vm.snapshot(args.snapshot, description=args.description, **kwargs)
        kind = "with memory" if snap.has_memory else "disk only"
        _out(f"{vm.name}: snapshot {snap.name} taken ({kind})")
    elif args.snapshot_command == "revert":
        with _progress(args, f"revert {vm.name}"):
            vm.revert(args.snapshot, **kwargs)
        _out(f"{vm.name}: reverted to {args.snapshot} ({vm.state.value})")
    else:
        with _progress(args, f"delete snapshot of {vm.name}"):
            vm.delete_snapshot(args.snapshot, **kwargs)
        _out(f"{vm.name}: snapshot {args.snapshot} deleted")
    return EXIT_OK


def _cmd_usage(args: argparse.Namespace, hv: Hypervisor) -> int:
    if args.names:
        usages = [hv.machine(name).usage() for name in args.names]
    else:
        usages = list(hv.usage_all().values())
    if args.json:
        _json([u.to_dict() for u in usages])
    else:
        _out(display.usages_text(usages))
    return EXIT_OK


# -- top ----------------------------------------------------------------------------------------------
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


# -- the parser ---------------------------------------------------------------------------------------
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
    sub.add_parser("list", aliases=["ls"], parents=[json_parent], help="list machines")
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

    p = sub.add_parser("usage", parents=[json_parent], help="resource usage of machines (all by default)")
    p.add_argument("names", nargs="*", metavar="NAME")

    p = sub.add_parser("destroy", parents=[timeout_parent], help="delete machines with their disks and snapshots")
    p.add_argument("names", nargs="+", metavar="NAME")

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
    "usage": _cmd_usage,
    "destroy": _cmd_destroy,
    "top": _cmd_top,
}


class _OneLineFormatter(logging.Formatter):
    """``vmctl: warning: <message>``, like the error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"vmctl: {record.levelname.lower()}: {_one_line(record.getMessage())}"


def _exit_code(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        if isinstance(exc, BackendError):
            for label, value in (("command", exc.command), ("status", exc.status)):
                if value is not None:
                    sys.stderr.write(f"{label}: {value}\n")
            for label, text in (("stdout", exc.stdout), ("stderr", exc.stderr)):
                if text:
                    sys.stderr.write(f"{label}:\n{text.rstrip()}\n")
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, VmctlError):
        message = f"{type(exc).__name__}: {message}" + ("" if debug else " (run with --debug for the traceback)")
    sys.stderr.write(f"vmctl: error: {_one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vmctl`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        sys.stderr.write(f"vmctl: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK

    # Warnings (a guest that ignored the power button, ...) are always shown; -v adds each verb.
    handler_log = logging.StreamHandler(sys.stderr)
    if args.debug:
        handler_log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    else:
        handler_log.setFormatter(_OneLineFormatter())
    vmctl_logger = logging.getLogger("vmctl")
    previous_level = vmctl_logger.level
    vmctl_logger.addHandler(handler_log)
    vmctl_logger.setLevel(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING)
    hv: Hypervisor | None = None
    try:
        if args.command == "backends":
            return _cmd_backends(args)
        handler = getattr(args, "handler", None) or _HANDLERS[args.command]
        hv = vmctl.connect(args.backend, **_backend_options(args.option))
        return handler(args, hv)
    except _UsageError as exc:
        sys.stderr.write(f"vmctl: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("vmctl: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vmctl list | head`: the reader left; not an error
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        _report(exc, debug or args.debug)
        return _exit_code(exc)
    finally:
        if hv is not None:
            try:
                hv.close()
            except Exception as exc:
                log.debug("closing the connection failed: %s", exc)
        vmctl_logger.removeHandler(handler_log)
        vmctl_logger.setLevel(previous_level)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
