"""The contract every backend passes: each verb, each transition, each invalid transition, and
what the guest itself sees. One module per concern:

- ``test_contract_definition``: creating, naming and destroying machines; what a stopped machine refuses
- ``test_contract_running``: pause, suspend, snapshots and the network link, as the guest sees them
- ``test_contract_power``: graceful and forced stop, restart, crash recovery
- ``test_contract_processes``: other processes driving the same machines
- ``test_contract_screen``: the guest's screen (``Machine.screenshot``)

The tests take the plugin's fixtures (``harness``, ``hv``, ``make_vm``) and run once per selected
harness (see :mod:`vmctl.testing.plugin`). A project may re-export them from a module of its own
(``from vmctl.testing.contract.test_contract_running import *``) to give them its own test ids.
"""
