"""vmctl's own run of the shipped contract suite (vmctl.testing.contract), over the harnesses in
``harness_*.py`` (registered by conftest.py). Re-exported here so the test ids stay
``tests/contract/test_contract.py::test_...[harness]``."""

from vmctl.testing.contract.test_contract_definition import *  # noqa: F403
from vmctl.testing.contract.test_contract_power import *  # noqa: F403
from vmctl.testing.contract.test_contract_processes import *  # noqa: F403
from vmctl.testing.contract.test_contract_running import *  # noqa: F403
from vmctl.testing.contract.test_contract_screen import *  # noqa: F403
