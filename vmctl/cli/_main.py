"""Running the ``vmctl`` command: logging, the connection, errors to one line and an exit status."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence

from vmctl.errors import BackendError, VmctlError
from vmctl.interface import Hypervisor
from vmctl.registry import get_provider

from ._base import EXIT_CODES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _UsageError
from ._commands import _cmd_backends
from ._options import backend_options
from ._parser import _HANDLERS, build_parser

log = logging.getLogger("vmctl.cli")


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
        provider = get_provider(args.backend)
        hv = provider.connect(**backend_options(provider, args.option))
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
