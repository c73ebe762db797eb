"""``python -m vmctl.cli``."""

import sys

from vmctl.cli import main

sys.exit(main())
