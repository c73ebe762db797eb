"""The script PyInstaller freezes into the one-file ``vmctl-boinc`` (see :mod:`vmctl.boinc.bundle`)."""

from vmctl.boinc.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
