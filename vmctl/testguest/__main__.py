"""``python -m vmctl.testguest [--cache-dir DIR] [-v]``: build the test guest once and print its paths."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ._cache import ensure_test_guest
from ._common import GuestBuildError


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vmctl.testguest", description="Build (once) and show the vmctl test guest."
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        guest = ensure_test_guest(args.cache_dir)
    except GuestBuildError as exc:
        print(f"error: {exc}")
        return 1
    print(f"kernel  {guest.kernel}")
    print(f"initrd  {guest.initrd}")
    print(f"disk    {guest.disk}")
    print(f"cmdline {guest.cmdline}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
