"""QEMU's accelerators past Linux: ``accel="hvf"`` (macOS) and ``"whpx"`` (Windows) are accepted
and handed to QEMU as they are, without TCG's ``-cpu max``; anything else is refused. (No macOS
or Windows host runs here: that QEMU starts with them is untested.)"""

from __future__ import annotations

from pathlib import Path

import pytest

import vmctl
from vmctl_qemu._command import qemu_argv


@pytest.mark.parametrize("accel", ["hvf", "whpx"])
def test_hvf_and_whpx_are_accepted_and_passed_to_qemu(tmp_path: Path, accel: str) -> None:
    hv = vmctl.connect("qemu", state_dir=tmp_path, accel=accel)
    assert hv.accel == accel  # type: ignore[attr-defined]
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    spec = vmctl.MachineSpec(name="m", memory_mib=64, kernel=tmp_path / "vmlinuz")
    argv = qemu_argv(
        spec, binary="qemu-system-x86_64", accel=accel, machine_type="q35", disk=None, disk_format="qcow2",
        serial_log=tmp_path / "console.log",
    )  # fmt: skip
    assert argv[argv.index("-accel") + 1] == accel
    assert "max" not in argv  # the host's own model, as under KVM


def test_an_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(vmctl.InvalidSpec, match="hvf, whpx"):
        vmctl.connect("qemu", state_dir=tmp_path, accel="xen")
