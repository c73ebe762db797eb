"""A guest cannot fill the host's disk through its console (issue 13, attack 9): the keeper keeps
the serial log (and qemu.log) under the hypervisor's ``log_max_bytes``, give or take what the
guest writes in the keeper's check interval (0.1 s: about 90 KB for a TCG guest writing flat out)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import vmctl
from vmctl.testguest import TestGuest, ensure_test_guest

pytestmark = pytest.mark.slow

CAP = 256 << 10
FLOOD_SH = """\
i=0
while :; do
    i=$((i + 1))
    echo "FLOOD $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
done
"""
LINE = len("FLOOD 1000 ") + 96 + 1


@pytest.mark.timeout(300)
def test_a_guest_flooding_its_console_stays_under_the_cap(tmp_path: Path) -> None:
    guest: TestGuest = ensure_test_guest()
    share = tmp_path / "share"
    share.mkdir()
    (share / "run.sh").write_text(FLOOD_SH)
    log = tmp_path / "console.log"
    hv = vmctl.connect("qemu", state_dir=tmp_path / "state", accel="tcg", log_max_bytes=CAP)
    vm = hv.create(
        vmctl.MachineSpec(
            name="flood",
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=guest.cmdline + " vmctl.share=job",
            memory_mib=128,
            serial_log=log,
            shared_dirs={"job": share},
        )
    )
    try:
        vm.start()
        written, largest = 0, 0
        deadline = time.monotonic() + 240
        while written < 8 * CAP:  # the guest has written 8 times the cap
            assert time.monotonic() < deadline, f"the guest wrote only {written} bytes"
            data = log.read_bytes() if log.exists() else b""
            largest = max(largest, len(data))
            counts = [int(n) for n in re.findall(rb"FLOOD (\d+) ", data)]
            written = max(counts, default=0) * LINE
            time.sleep(0.05)
        assert largest < 2 * CAP, f"the console log reached {largest} bytes with a cap of {CAP}"
        assert b"bytes of older output dropped" in log.read_bytes()
        assert vm.state is vmctl.State.RUNNING
    finally:
        vm.destroy()
