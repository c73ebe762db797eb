"""A small Linux test guest, built offline from Debian packages and cached once per machine.

The guest is Debian's kernel (package ``linux-image-amd64``'s current dependency) plus a busybox
initramfs (``busybox-static``) whose ``/init`` is ``vmctl/_guest/init.sh``, and a small ext2 disk
as a qcow2 base image. It boots in a few seconds under QEMU's TCG and speaks a line protocol on
its serial console (``VMCTL-GUEST READY``, ``VMCTL-GUEST TICK n=...``, ...), documented at the top
of ``init.sh``. The drivers of CD-ROMs (AHCI, sr) and floppies are kept out of the initramfs
(they would slow every boot), in ``TestGuest.media_modules``: a test copies that tar into a 9p
share and the guest's job runs ``media load TAG sr0 fd0`` (which waits for the devices) and
``media list`` (``VMCTL-GUEST MEDIA <dev> bytes=<n> ro=<0|1>`` per block device), see
``vmctl/_guest/media.sh``.

Building needs the tools ``apt-get``/``apt-cache`` (with package lists: run ``apt-get update``
once), ``dpkg``, ``cpio``, ``mke2fs`` (e2fsprogs) and ``qemu-img`` (qemu-utils), and about 70 MB
of download and 500 MB of temporary disk space. The result (about 15 MB) is cached under
``cache_dir`` (default ``$VMCTL_CACHE_DIR/testguest`` or ``~/.cache/vmctl/testguest``) in a
directory keyed by the kernel package, its version, the busybox version and a hash of the guest's
data files, so later calls return at once.

Run ``python -m vmctl.testguest [--cache-dir DIR]`` to build and print the paths.
"""

from __future__ import annotations

from ._cache import default_cache_dir, ensure_test_guest
from ._common import GUEST_CMDLINE, GUEST_MEDIA_MODULES, GUEST_MODULES, GuestBuildError, TestGuest

__all__ = [
    "GUEST_CMDLINE",
    "GUEST_MEDIA_MODULES",
    "GUEST_MODULES",
    "GuestBuildError",
    "TestGuest",
    "default_cache_dir",
    "ensure_test_guest",
]
