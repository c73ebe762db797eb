"""What every part of the ``vmctl`` command shares: exit codes, usage errors, output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
from vmctl.interface import Machine
from vmctl.progress import Progress

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
        "managed": vm.managed,
    }
