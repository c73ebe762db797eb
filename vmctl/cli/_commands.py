"""The commands that act on machines: list, show, create, the verbs, snapshot, screenshot, usage, destroy."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vmctl
from vmctl import display
from vmctl.errors import InvalidSpec, MachineNotFound
from vmctl.interface import Hypervisor
from vmctl.types import MachineSpec

from ._base import EXIT_OK, _json, _machine_dict, _out, _progress, _timeout, _UsageError


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
    vms = hv.machines(all=args.all)
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
    snapshots = vm.snapshots() if vm.capabilities.snapshots else None
    if args.json:
        data = _machine_dict(vm)
        data["spec"] = vm.spec.to_dict()
        data["capabilities"] = vm.capabilities.to_dict()
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
            vm.destroy(**_timeout(args), delete_disks=args.delete_disks)
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


def _cmd_screenshot(args: argparse.Namespace, hv: Hypervisor) -> int:
    vm = hv.machine(args.name)
    target = args.output or f"{vm.name}.png"
    if target == "-" and sys.stdout.isatty():
        raise _UsageError("will not write a PNG to a terminal: give -o FILE or redirect standard output")
    shot = vm.screenshot(**_timeout(args))
    if target == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(shot.png)
        sys.stdout.buffer.flush()
        return EXIT_OK
    shot.save(target)
    _out(f"{vm.name}: screenshot {shot.width}x{shot.height} written to {target}")
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
