"""The ``vmctl`` command: every lifecycle verb from a terminal or a script.

Global options come before the command::

    vmctl [--backend NAME] [--option KEY=VALUE]... [--debug] [-v] [--no-progress] COMMAND ...

``--backend`` defaults to ``$VMCTL_BACKEND``, else ``qemu``. Backend options (the keyword
arguments of :func:`vmctl.connect`, such as ``state_dir``, ``accel`` or ``uri``) come from
``$VMCTL_OPTIONS`` (``KEY=VALUE`` items separated by spaces, quoted as in a shell) and then from
each ``--option KEY=VALUE``, which wins. Each value is read as the type the backend declares for
that option (``true``/``false`` for a boolean, digits for a number, ``5,3`` for libvirt's
``keepalive``); an unknown option or an unreadable value is an ``InvalidSpec`` (exit 9) that
names the backend's options.

Commands: ``backends``, ``list``, ``show``, ``create``, ``start``, ``stop``, ``poweroff``,
``pause``, ``resume``, ``suspend``, ``restart``, ``snapshot take|list|revert|delete``, ``usage``,
``destroy`` and ``top``. The listing commands (``backends``, ``list``, ``show``, ``snapshot
list``, ``usage``, ``top``) take ``--json``.

An error is printed as one line on stderr (``vmctl: error: ...``); ``--debug`` adds the traceback
and debug logging. The exit status says what went wrong:

| code | meaning |
|---|---|
| 0 | success |
| 1 | an unexpected error (a bug: run again with ``--debug`` and report it) |
| 2 | the command line is wrong (unknown command, missing argument, bad option) |
| 3 | not found: no machine or snapshot of that name (`MachineNotFound`, `SnapshotNotFound`) |
| 4 | the machine's state does not allow the verb (`InvalidState`) |
| 5 | a deadline passed (`OperationTimeout`) |
| 6 | the hypervisor or its tool failed (`BackendError`) |
| 7 | the backend cannot do this verb at all (`Unsupported`) |
| 8 | the backend cannot be used here (`BackendUnavailable`) |
| 9 | an invalid name, path, value or spec file (`InvalidSpec`) |
| 10 | a machine of that name already exists (`MachineExists`) |
| 130 | interrupted (Ctrl-C) |

>>> main(["--backend", "memory", "--option", "namespace=cli-doctest", "list", "--json"])
[]
0
"""

from __future__ import annotations

import time  # noqa: F401 - tests patch vmctl.cli.time.sleep

from ._base import EXIT_CODES
from ._main import main
from ._options import parse_options
from ._parser import build_parser

__all__ = ["EXIT_CODES", "build_parser", "main", "parse_options"]
