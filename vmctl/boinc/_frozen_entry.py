"""The script PyInstaller freezes into the one-file ``vmctl-boinc`` (see :mod:`vmctl.boinc.bundle`).

The frozen program is also its own interpreter for the QEMU backend's keeper (started as
``vmctl-boinc vmctl-qemu-keeper VMDIR RUN_ID -- QEMU...``). The one-file bootloader points
``LD_LIBRARY_PATH`` at the libraries it unpacked; the programs vmctl starts (QEMU, qemu-img,
VBoxManage) must load the host's own, so the variable is put back as it was.
"""

import os
import sys


def _restore_library_path() -> None:
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        os.environ["LD_LIBRARY_PATH"] = original
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)


if __name__ == "__main__":
    _restore_library_path()
    from vmctl_qemu._launcher import FROZEN_KEEPER

    if sys.argv[1:2] == [FROZEN_KEEPER]:
        from vmctl_qemu._keeper import main as keeper

        raise SystemExit(keeper(sys.argv[2:]))
    if sys.argv[1:2] == ["vmctl-qemu-throttle"]:
        from vmctl_qemu._throttle import main as throttle

        raise SystemExit(throttle(sys.argv[2:]))
    from vmctl.boinc.__main__ import main

    raise SystemExit(main())
