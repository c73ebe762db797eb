"""What the test guest is made of: its constants, its result type and its one error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmctl.errors import VmctlError

log = logging.getLogger("vmctl.testguest")

#: The kernel command line for the guest; append ``vmctl.share=TAG`` arguments for 9p shares.
GUEST_CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1"

#: Kernel modules the guest loads (their dependencies are added from the kernel package).
#: virtio_pci is a module in Debian's kernel; ext2 is served by ext4 (CONFIG_EXT4_USE_FOR_EXT2),
#: which asks the crypto API for "crc32c" at mount time (crc32c_generic; crc32c_intel needs
#: SSE4.2, which TCG's default CPU lacks); button (ACPI power button) and evdev (/dev/input/event*,
#: read by busybox acpid) are modules too.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "ext4",
    "evdev",
    "button",
)

#: Kernel modules kept beside the guest (``TestGuest.media_modules``, a tar) and loaded only on
#: demand from a share (``media load TAG``, see vmctl/_guest/media.sh): the AHCI controller and
#: SCSI CD-ROM drivers of a CD-ROM on q35's SATA and the floppy driver. In the initramfs they
#: would make it a quarter larger, and the floppy driver's probe would slow every boot.
GUEST_MEDIA_MODULES: tuple[str, ...] = ("ahci", "sr_mod", "floppy")
MEDIA_TAR = "media-modules.tar"

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
DISK_SIZE = "64M"

# Bump when the build procedure changes in a way that changes the result.
_BUILD_FORMAT = "1"
_MANIFEST = "guest.json"
_GUEST_DATA = Path(__file__).resolve().parent.parent / "_guest"
# (file in _guest/, path in the initramfs, mode)
_GUEST_FILES: tuple[tuple[str, str, int], ...] = (
    ("init.sh", "init", 0o755),
    ("powerbutton.sh", "etc/acpi/PWRF/00000080", 0o755),
    ("udhcpc.sh", "etc/vmctl/udhcpc.sh", 0o755),
    ("share.sh", "bin/share", 0o755),
    ("media.sh", "bin/media", 0o755),
)
_INITRAMFS_DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "mnt",
    "root",
    "etc",
    "etc/vmctl",
    "etc/acpi",
    "lib/modules",
    "var",
    "run",
)

Progress = Callable[[str], None]


class GuestBuildError(VmctlError, RuntimeError):
    """Building the test guest failed; the message names the step and, if known, the fix."""


@dataclass(frozen=True)
class TestGuest:
    """The paths of a built test guest (all files are read-only; use a qcow2 overlay on ``disk``)."""

    __test__ = False  # not a pytest test class, despite the name

    kernel: Path
    initrd: Path
    disk: Path
    cmdline: str
    media_modules: Path | None = None
    """A tar of the CD-ROM and floppy drivers, kept out of the initramfs (they would slow every
    boot): copy it into a 9p share and run ``media load TAG`` in the guest."""


@dataclass(frozen=True)
class _Versions:
    kernel_package: str  # linux-image-6.1.0-N-amd64
    kernel_version: str  # its Debian version
    busybox_version: str
