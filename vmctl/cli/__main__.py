"""``python -m vmctl.cli``."""

import sys

from vmctl.cli import main

if __name__ == "__main__":
    sys.exit(main())
