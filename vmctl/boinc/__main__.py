"""``vmctl-boinc``: the program a BOINC client starts as a task's app (see docs/boinc.md).

Started by the client with the slot directory as its working directory, it runs the task's VM
until the task is done, quits, is aborted or must wait. ``vmctl-boinc --reap`` removes the VMs
of tasks that no longer exist; ``vmctl-boinc --backends`` lists the backends and whether they
are usable here. ``vmctl-boinc bundle --out DIR`` freezes it into one executable (see
:mod:`vmctl.boinc.bundle`); ``vmctl-boinc package`` writes a job's app version (see
:mod:`vmctl.boinc.package`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import vmctl
from vmctl.boinc import reaper
from vmctl.boinc.adapter import EXIT_INIT_FAILURE, Adapter
from vmctl.boinc.hostconfig import HostConfigError, load_host_config
from vmctl.boinc.initdata import InitDataError, read_init_data
from vmctl.boinc.job import VBOX_OPTIONS, JobError, find_job_file, load_job, vbox_image_name
from vmctl.boinc.shm import SharedMemoryError, open_shared_memory
from vmctl.boinc.slot import Slot

__all__ = ["main"]

log = logging.getLogger("vmctl.boinc")


class _Formatter(logging.Formatter):
    """``2025-01-31 12:00:00 (1234): message``, as BOINC's own apps write to stderr.txt."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s (%(process)d): %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, rest = text.partition("): ")
            text = f"{stamp}): {record.levelname}: {rest}"
        return text


def _not_a_pause_or_resume(record: logging.LogRecord) -> bool:
    # vmctl logs every verb; the adapter logs suspends and resumes itself, at most one a minute
    # (CPU throttling suspends and resumes a task several times a second).
    return not (record.name == "vmctl" and record.msg in ("%s: pause", "%s: resume"))


def setup_logging(verbose: bool = False) -> None:
    """Timestamped lines on stderr (the client appends the app's stderr to stderr.txt)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    if not verbose:
        handler.addFilter(_not_a_pause_or_resume)
    root = logging.getLogger("vmctl")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if not verbose:
        logging.getLogger("vmctl.tools").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmctl-boinc",
        description="Run a BOINC task's work in a VM (started by the BOINC client in the task's slot).",
        allow_abbrev=False,  # a project's own options must never be taken for abbreviations of ours
    )
    p.add_argument("--reap", action="store_true", help="remove the VMs of tasks that no longer exist, then exit")
    p.add_argument("--boinc-dir", type=Path, help="the BOINC data directory (for --reap; default: from the slot)")
    p.add_argument("--slot", type=Path, help="the slot directory (default: the working directory)")
    p.add_argument("--job", type=Path, help="the job file (default: vmctl_job.toml or vbox_job.xml in the slot)")
    p.add_argument("--nthreads", type=float, help="virtual CPUs (overrides the job file, as for vboxwrapper)")
    p.add_argument("--memory_size_mb", type=int, help="VM memory in MiB (overrides the job file)")
    p.add_argument("--vmimage", type=int, help="vbox_job.xml: the image is vm_image_N.vdi (as for vboxwrapper)")
    # vboxwrapper's options vmctl-boinc cannot honour yet: refused, never ignored
    p.add_argument("--trickle", type=float, help="send a trickle-up with the elapsed time every X s (as vboxwrapper)")
    p.add_argument("--register_only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sporadic", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {vmctl.__version__}")
    p.add_argument("--backends", action="store_true", help="list the backends and whether they are usable, then exit")
    return p


def _bundle_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmctl-boinc bundle", description="Freeze vmctl-boinc into one self-contained executable DIR/vmctl-boinc."
    )
    p.add_argument("--out", type=Path, required=True, help="the directory to write vmctl-boinc into")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _bundle(arguments: Sequence[str]) -> int:
    from vmctl.boinc.bundle import BundleError, build_bundle

    args = _bundle_parser().parse_args(arguments)
    setup_logging(args.verbose)
    try:
        build_bundle(args.out)
    except BundleError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _package_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmctl-boinc package",
        description="Write the app version directory of a job (version.xml, the bundle as main program, "
        "the job's files) and a matching anonymous-platform app_info.xml.",
    )
    p.add_argument("--job", type=Path, required=True, help="the job file (vmctl_job.toml)")
    p.add_argument("--image", type=Path, help="the disk image (its logical name: the job's image)")
    p.add_argument(
        "--file", action="append", default=[], metavar="NAME=PATH", help="another file the job opens (kernel, ...)"
    )
    p.add_argument("--out", type=Path, required=True, help="the directory to write")
    p.add_argument("--bundle", type=Path, help="an existing frozen vmctl-boinc (default: build one)")
    p.add_argument("--app", default="vmctl", help="the app's name (default: vmctl)")
    p.add_argument("--version-num", type=int, default=100, help="the app version number (default: 100)")
    p.add_argument("--platform", default="x86_64-pc-linux-gnu", help="the BOINC platform")
    p.add_argument("--plan-class", help="the plan class (app_info.xml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _package(arguments: Sequence[str]) -> int:
    import tempfile

    from vmctl.boinc.bundle import BundleError, build_bundle
    from vmctl.boinc.job import load_job
    from vmctl.boinc.package import PackageError, write_app_version

    parser = _package_parser()
    args = parser.parse_args(arguments)
    setup_logging(args.verbose)
    files: dict[str, Path] = {}
    for item in args.file:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            parser.error(f"--file takes NAME=PATH, not {item!r}")
        files[name] = Path(value)
    try:
        if args.image is not None:
            image = load_job(args.job).image
            if image is None:
                raise PackageError("--image was given but the job file names no image")
            files[image] = args.image
        with tempfile.TemporaryDirectory(prefix="vmctl-package-") as tmp:
            bundle = args.bundle or build_bundle(Path(tmp))
            written = write_app_version(
                args.out,
                job=args.job,
                bundle=bundle,
                files=files,
                app=args.app,
                version_num=args.version_num,
                platform=args.platform,
                plan_class=args.plan_class,
            )
    except (PackageError, BundleError, JobError) as exc:
        log.error("%s", exc)
        return 1
    log.info("wrote the app version %s in %s", written.main_program, written.directory)
    return 0


def _list_backends() -> int:
    for info in vmctl.backends():
        why = "" if info.usable else f" ({info.reason}{'; ' + info.hint if info.hint else ''})"
        print(f"{info.name}\t{'usable' if info.usable else 'unusable'}{why}")
    return 0


def _reap(args: argparse.Namespace) -> int:
    boinc_dir = args.boinc_dir
    if boinc_dir is None:
        try:
            boinc_dir = Path(read_init_data(args.slot or Path.cwd()).boinc_dir)
        except InitDataError:
            boinc_dir = Path.cwd()
    reaped = reaper.reap(reaper.registry_dir(boinc_dir))
    log.info(
        "reaped %d VM(s) of vanished tasks under %s%s",
        len(reaped),
        boinc_dir,
        f": {', '.join(reaped)}" if reaped else "",
    )
    return 0


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    path = Path(args.slot or Path.cwd())
    try:
        init = read_init_data(path)
    except InitDataError as exc:
        log.error("%s", exc)
        return EXIT_INIT_FAILURE
    slot = Slot(path, project_dir=init.project_dir or None)
    refused = [
        f"{option}: {VBOX_OPTIONS[option].removeprefix('refused: ')}"
        for option, given in (
            ("--register_only", args.register_only),
            ("--sporadic", args.sporadic),
        )
        if given
    ]
    if refused:
        log.error("vboxwrapper's command-line option(s) cannot be honoured: %s", "; ".join(refused))
        return EXIT_INIT_FAILURE
    try:
        job = load_job(args.job or find_job_file(slot.path, slot.project_dir))
        job = job.with_overrides(
            cpus=math.ceil(args.nthreads) if args.nthreads else None, memory_mib=args.memory_size_mb
        )
        if args.vmimage is not None and job.source.endswith(".xml") and not job.image_in_project and job.image:
            job = dataclasses.replace(job, image=vbox_image_name(args.vmimage))
    except JobError as exc:
        log.error("job file error: %s", exc)
        return EXIT_INIT_FAILURE
    try:
        profile = load_host_config(not_under=[d for d in (init.boinc_dir, init.project_dir, path) if d]).profile(
            job.backend
        )
    except HostConfigError as exc:
        log.error("%s", exc)
        return EXIT_INIT_FAILURE
    try:
        shm = open_shared_memory(slot.path, init.shm_key)
    except SharedMemoryError as exc:
        log.error("cannot talk to the BOINC client: %s", exc)
        return EXIT_INIT_FAILURE
    adapter = Adapter(
        slot, init, job, shm, cmdline_args=argv, profile=profile, trickle_period=max(0.0, args.trickle or 0.0)
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        adapter.request_quit(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        code = adapter.run()
    finally:
        shm.close()
    log.info("vmctl-boinc exits with status %d", code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmctl-boinc`` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bundle"]:
        return _bundle(arguments[1:])
    if arguments[:1] == ["package"]:
        return _package(arguments[1:])
    args, unknown = _parser().parse_known_args(arguments)
    setup_logging(args.verbose)
    if unknown:
        log.warning("ignoring unknown command-line arguments: %s", " ".join(unknown))
    if args.backends:
        return _list_backends()
    if args.reap:
        return _reap(args)
    return _run(args, arguments)


if __name__ == "__main__":
    raise SystemExit(main())
