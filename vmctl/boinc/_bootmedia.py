"""The media a vboxwrapper job gives its guest besides the disk image: the contextualisation ISO
(a CD-ROM), the cache disk (a second disk kept in the slot) and the floppy of Floppy I/O, with
``init_data.xml`` or CERN's data format on it.

As vboxwrapper (BOINC's HEAD, samples/vboxwrapper/vboxwrapper.h, vboxwrapper.cpp and
vbox_vboxmanage.cpp's ``create_vm``) lays them out: the ISO is the slot's ``vm_isocontext.iso``
and the VM then has no disk image, only the cache disk, the slot's ``vm_cache.vdi`` (attached
only with the ISO: alone, vboxwrapper ignores ``enable_cache_disk``); the floppy is
``vm_floppy_<slot>.img`` in the slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import vmctl
from vmctl.boinc import _safefs
from vmctl.boinc._job_model import Job
from vmctl.boinc._outcome import Fatal
from vmctl.boinc._task import Task
from vmctl.boinc.initdata import InitData
from vmctl.boinc.slot import SlotError

__all__ = [
    "CACHE_DISK_COPY",
    "CACHE_DISK_FILENAME",
    "FLOPPY_SIZE",
    "ISO_IMAGE_FILENAME",
    "cache_disk",
    "cern_data",
    "check_media",
    "context_iso",
    "floppy_image",
    "floppy_name",
    "write_cern_output",
    "write_floppy",
]

log = logging.getLogger("vmctl.boinc")

#: vboxwrapper.h
ISO_IMAGE_FILENAME = "vm_isocontext.iso"
CACHE_DISK_FILENAME = "vm_cache.vdi"
#: The slot's own copy of a cache disk the client only linked into the slot (the project's file,
#: which every task of the app shares, is never written).
CACHE_DISK_COPY = "vmctl_vm_cache.vdi"

#: floppyio.h's DEFAULT_FIO_FLOPPY_SIZE: the image is this many bytes.
FLOPPY_SIZE = 28672
# floppyio.cpp, FloppyIO::FloppyIO in hypervisor mode: the output buffer (hypervisor -> guest)
# is the first szFloppy/2 - 1 bytes, then the input buffer (guest -> hypervisor) of the same
# size, then the "data available for guest" byte and the "data available for hypervisor" byte.
_BUFFER = FLOPPY_SIZE // 2 - 1  # 14335
_FLAG_FOR_GUEST = 2 * _BUFFER  # 28670
#: The init data sent: the cap is the buffer less one byte for the C string's terminator
#: (FloppyIO::send trims longer data to szOutput - 1).
FLOPPY_DATA_MAX = _BUFFER - 1
_INIT_DATA_MAX = 1 << 20


def floppy_name(init: InitData) -> str:
    """vboxwrapper.cpp: ``vm_floppy_<slot>.img`` (FLOPPY_IMAGE_FILENAME, the slot number)."""
    return f"vm_floppy_{init.slot}.img"


def floppy_image(data: bytes) -> bytes:
    """The floppy image vboxwrapper writes for ``data``, byte for byte.

    floppyio.cpp (BOINC's HEAD): the constructor truncates the file and ``reset()`` fills
    DEFAULT_FIO_FLOPPY_SIZE (28672) bytes with zeroes; ``send()`` writes the data, trimmed to
    szOutput - 1 = 14334 bytes and zero-padded to szOutput = 14335, at ofsOutput = 0, then the
    byte 0x01 at ofsCtrlByteOut = szInput + szOutput = 28670 ("data available for guest"). The
    guest's input buffer (14335..28669) and the last byte stay zero.
    """
    image = bytearray(FLOPPY_SIZE)
    sent = data[:FLOPPY_DATA_MAX]
    image[: len(sent)] = sent
    image[_FLAG_FOR_GUEST] = 1
    return bytes(image)


def _one_line(value: str) -> str:
    # not in vboxwrapper: a value with a line break would add a line of its own to the guest's
    # name=value data
    return value.replace("\r", " ").replace("\n", " ")


def cern_data(init: InitData) -> str:
    """vboxwrapper.cpp's ``set_floppy_image`` with ``enable_cern_dataformat``: ``name=value``
    lines, the credits as ``%.17g`` (so that a double survives the round trip)."""
    return (
        f"BOINC_USERNAME={_one_line(init.user_name)}\n"
        f"BOINC_AUTHENTICATOR={_one_line(init.authenticator)}\n"
        f"BOINC_USERID={init.userid}\n"
        f"BOINC_HOSTID={init.hostid}\n"
        f"BOINC_USER_TOTAL_CREDIT={init.user_total_credit:.17g}\n"
        f"BOINC_HOST_TOTAL_CREDIT={init.host_total_credit:.17g}\n"
    )


def write_floppy(task: Task) -> Path:
    """Write the task's floppy image into the slot (private: the CERN format carries the
    account's authenticator) and return its path. vboxwrapper writes it each time it makes the
    VM; so does vmctl-boinc, before the VM first boots, so the guest finds it at once."""
    job, slot = task.job, task.slot.path
    if job.cern_dataformat:
        data = cern_data(task.init).encode()
    else:
        try:
            data = _safefs.read_bounded(slot, "init_data.xml", _INIT_DATA_MAX)
        except OSError as exc:  # vboxwrapper: "Cannot write init_data.xml to floppy abstration device"
            log.warning("cannot put init_data.xml on the floppy: %s", exc)
            data = b""
    if len(data) > FLOPPY_DATA_MAX:
        log.warning("the floppy holds %d bytes of the %d given, as in vboxwrapper", FLOPPY_DATA_MAX, len(data))
    path = slot / floppy_name(task.init)
    tmp = slot / f".{path.name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(floppy_image(data))
    os.replace(tmp, path)  # a link planted at the name is replaced, never followed
    return path


#: vboxwrapper.cpp: what a CERN-format job's ``output`` says when its job_duration ends it
CERN_OUTPUT = "Work Unit completed!\n"


def write_cern_output(task: Task) -> None:
    """vboxwrapper.cpp, at ``job_duration`` with ``enable_cern_dataformat``: the file ``output``
    says ``Work Unit completed!`` (here the file the slot's ``output`` stands for: the result's
    output file, which a soft link in the slot names)."""
    try:
        path = task.slot.resolve("output")
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise SlotError(f"{path} is not a regular file")
        path.write_text(CERN_OUTPUT)
    except (SlotError, OSError) as exc:
        log.warning("cannot write the CERN job's output file: %s", exc)


def _slot_medium(task: Task, key: str, name: str) -> Path:
    """The file the slot's ``name`` stands for; missing or empty is a broken app version (206)."""
    try:
        path = task.slot.resolve(name)
    except SlotError as exc:
        raise Fatal(f"{key}: {exc}") from None
    if not path.is_file() or path.stat().st_size == 0:
        raise Fatal(f"{key}: the app version must put a non-empty {name} in the slot ({path} is missing or empty)")
    return path


def context_iso(task: Task) -> Path:
    """``enable_isocontextualization``: the ISO the slot's name stands for (only read)."""
    assert task.job.cdrom is not None
    return _slot_medium(task, "enable_isocontextualization", task.job.cdrom)


def cache_disk(task: Task) -> Path:
    """``enable_cache_disk``: the slot's cache disk, written in place and so kept across the
    task's restarts. Where the slot only links to the project's file (which other tasks share),
    the slot gets its own copy first, made once."""
    assert task.job.cache_disk is not None
    slot = task.slot.path
    copy = slot / CACHE_DISK_COPY
    if copy.is_file() and not copy.is_symlink():
        return copy
    path = _slot_medium(task, "enable_cache_disk", task.job.cache_disk)
    if path.parent == slot and not path.is_symlink():
        return path
    log.info("copying the cache disk %s into the slot as %s (the slot's own, written by the VM)", path, copy.name)
    tmp = slot / f".{CACHE_DISK_COPY}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    shutil.copyfile(path, tmp, follow_symlinks=True)
    os.replace(tmp, copy)
    return copy


#: The job keys that need a medium, the Job field that says so, and the backend capability.
_MEDIA_KEYS = (
    ("enable_isocontextualization", "cdrom", "cdrom"),
    ("boot_iso", "boot_cdrom", "cdrom"),
    ("enable_cache_disk", "cache_disk", "extra_disks"),
    ("enable_floppyio", "floppy", "floppy"),
)


def check_media(job: Job, caps: vmctl.Capabilities) -> None:
    """Fail the task at once (206) where the backend cannot attach a medium the job's guest
    expects, naming the job file's keys and the backend."""
    missing = [key for key, attr, flag in _MEDIA_KEYS if getattr(job, attr) and not getattr(caps, flag)]
    if missing:
        raise Fatal(
            f"the {job.backend} backend cannot attach what the job file's {', '.join(missing)} give the guest "
            "(vmctl-boinc attaches them on qemu and libvirt): it cannot run this job"
        )
