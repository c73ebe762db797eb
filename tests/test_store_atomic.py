"""Readers of vmctl's own files never see a writer's half-written file (issue 21).

One process rewrites a machine's record as fast as it can, with records of changing size; this
process reads it meanwhile. Every read must parse (the old or the new record), never fail.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from vmctl.backend.store import MachineStore

WRITER = """
import sys
from pathlib import Path
from vmctl.backend.store import MachineStore
store = MachineStore(Path(sys.argv[1]), "qemu")
print("READY", flush=True)
for i in range(1_000_000):
    store.update("m", notes={"n": "x" * (i % 5000)}, count=i)
"""


def test_reads_meet_only_whole_records(tmp_path: Path) -> None:
    store = MachineStore(tmp_path, "qemu")
    with store.creating("m") as directory:
        (directory / "machine.json").write_text('{"status": "stopped", "notes": {}}')
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
        seen = set()
        reads = 0
        # on a busy host the writer may get little CPU: read on until the reads met many records
        deadline = time.monotonic() + 120
        while reads < 3000 or (len(seen) <= 10 and time.monotonic() < deadline):
            record = store.read("m")  # raises on a half-written record
            seen.add(record.get("count"))
            reads += 1
        assert writer.poll() is None, "the writer ended before the reads did"
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) > 10, "the reads did not overlap the writes"
