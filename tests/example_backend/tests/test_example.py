"""The example backend's own tests, beside vmctl's contract suite."""

from __future__ import annotations

import pytest
import vmctl
from vmctl.testing import Harness


def test_the_backend_is_installed() -> None:
    assert "example" in [b.name for b in vmctl.backends() if b.usable]


@pytest.mark.vmctl_contract
def test_machines_belong_to_their_connection(harness: Harness, hv: vmctl.Hypervisor) -> None:
    """A backend's own test that takes the suite's fixtures: it runs once per selected harness."""
    vm = hv.create(harness.spec("private"))
    try:
        with pytest.raises(vmctl.MachineNotFound):
            vmctl.connect("example").machine("private")
    finally:
        vm.destroy()
