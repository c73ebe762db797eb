"""A machine on real QEMU (TCG) booting the test guest, for tests of the QEMU backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vmctl
from vmctl.testguest import ensure_test_guest


@contextlib.contextmanager
def guest_machine(tmp_path: Path, name: str, **spec: Any) -> Iterator[vmctl.Machine]:
    """A stopped machine ``name`` in a QEMU state directory under ``tmp_path``; destroyed after."""
    guest = ensure_test_guest()
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg")
    machine = hv.create(
        vmctl.MachineSpec(
            name=name,
            disk=guest.disk,
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=guest.cmdline,
            memory_mib=128,
            **spec,
        )
    )
    try:
        yield machine
    finally:
        machine.destroy()
