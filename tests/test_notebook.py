"""The example notebook runs, start to finish, against the real QEMU backend.

It is executed with nbclient in a fresh Jupyter kernel, as a reader would run it; its machine
lives in a temporary directory that this test cleans up even when a cell fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbclient
import nbformat
import pytest

import vmctl
from vmctl.testguest import ensure_test_guest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "lifecycle.ipynb"


@pytest.mark.slow
def test_lifecycle_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_test_guest()  # built (or found in the cache) before the clock starts
    monkeypatch.setenv("VMCTL_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    started = time.monotonic()
    try:
        client.execute()
    finally:
        state_dir = tmp_path / "state"
        if state_dir.exists():
            with vmctl.connect("qemu", state_dir=state_dir) as hv:
                leftovers = [vm.name for vm in hv.machines()]
                for vm in hv.machines():
                    vm.destroy()
            assert leftovers == [], "the notebook left machines behind"
    took = time.monotonic() - started
    assert took < 90, f"the notebook took {took:.0f} s; keep it under a minute"

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "graceful: True - state: stopped" in text
    assert "suspended None" in text
    assert any("image/png" in out.get("data", {}) for out in outputs), "no plot"
    progress = [out for out in outputs if "vmctl-progress" in out.get("data", {}).get("text/html", "")]
    assert progress, "Progress did not use the notebook display"
    assert all("done in" in out["data"]["text/html"] for out in progress)  # each display updated to its end
