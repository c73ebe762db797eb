"""Trickle-up messages and intermediate uploads: what the guest sends the project before the task ends.

As BOINC's app library does it (api/boinc_api.cpp, HEAD):

- a trickle-up (``boinc_send_trickle_up``) is the file ``trickle_up.xml`` in the slot,
  ``<variety>V</variety>`` and the message's text, announced by ``<have_new_trickle_up/>`` on the
  ``trickle_up`` channel; the client then moves the file into the project directory
  (``trickle_up_<result>_<time>.xml``) and sends it with the next scheduler request;
- an intermediate upload (``boinc_upload_file``) is the empty file ``boinc_ufr_<open name>`` in
  the slot, announced by ``<have_new_upload_file/>`` on the same channel; the client checks the
  result's output file of that open name, deletes the request file and uploads the output. When
  the upload has ended it writes ``boinc_ufs_<open name>`` (``<status>N</status>``, 0: done) and
  says ``<upload_file_status/>`` on the ``trickle_down`` channel.

vboxwrapper's sources for them: the job's ``trickle_trigger_file`` (a file the guest writes to
the shared directory; its contents are the message, its name the variety, it is deleted once
sent), ``--trickle X`` (every X s of elapsed time, variety ``cpu_time``, the elapsed time) and
``intermediate_upload_file`` (an output the guest writes to the shared directory early).

Unlike the library, a trickle is never written over one the client has not taken yet (the
library overwrites ``trickle_up.xml``, losing the first of two trickles sent within a second),
nor so soon after that the client would move both in the same second (its name for the moved
file has one-second resolution): the trigger stays in the shared directory until its turn, and
the guest's trickles go before ``--trickle``'s (of which only the latest waits). Everything read
from the shared directory is the guest's: read with :mod:`vmctl.boinc._safefs` (no link followed, regular files
only, bounded), and a trigger over :data:`TRICKLE_MAX` bytes is refused and deleted.

>>> trickle_text("cpu_time", "<cpu_time>60.000000</cpu_time>")
'<variety>cpu_time</variety>\\n<cpu_time>60.000000</cpu_time>'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import deque
from pathlib import Path

from vmctl.boinc._guestfiles import GuestFiles
from vmctl.boinc._outcome import Fatal
from vmctl.boinc._safefs import UnsafeFile, read_bounded, stat_beneath, unlink_beneath, write_exclusive
from vmctl.boinc._task import Task
from vmctl.boinc.shm import Channel, SharedMemory

__all__ = [
    "TRICKLE_FILE",
    "TRICKLE_MAX",
    "UPLOAD_REQUEST_PREFIX",
    "UPLOAD_STATUS_PREFIX",
    "Transfers",
    "trickle_text",
]

log = logging.getLogger("vmctl.boinc")

TRICKLE_FILE = "trickle_up.xml"
"""lib/app_ipc.h's TRICKLE_UP_FILENAME."""
UPLOAD_REQUEST_PREFIX = "boinc_ufr_"
UPLOAD_STATUS_PREFIX = "boinc_ufs_"
TRICKLE_MAX = 64 << 10
"""Bytes of a trickle trigger file sent (a larger one is refused: the client sends the message
inside its scheduler request)."""
TRICKLE_GAP = 1.5
"""Seconds between the client taking a trickle and the next being written: the client names the
file it moves ``trickle_up_<result>_<seconds>.xml``, and a second one moved within the same
second would replace the first."""
STATUS_MAX = 256
"""Bytes of the client's ``boinc_ufs_`` file read (the library reads one line of 256)."""
_STATUS = re.compile(rb"<status>\s*(-?\d+)\s*</status>")

# The task's record (TaskState.extra) keeps what survives a restart of the adapter.
_UPLOADS = "intermediate_uploads"
"""open name -> "requested" | "done" | "failed"."""
_LAST_TRICKLE = "last_trickle_elapsed"


def trickle_text(variety: str, body: str) -> str:
    """The contents of ``trickle_up.xml`` as ``boinc_send_trickle_up`` writes them."""
    return f"<variety>{variety}</variety>\n{body}"


class Transfers:
    """The task's trickle-ups and intermediate uploads; :meth:`poll` once a second while the
    VM runs, :meth:`receive` at every tick (the client's upload status)."""

    def __init__(self, task: Task, files: GuestFiles, shm: SharedMemory, trickle_period: float = 0.0) -> None:
        self._task = task
        self._files = files
        self._shm = shm
        self.trickle_period = trickle_period
        self._periodic: deque[str] = deque()
        self._announce_trickle = False
        self._announce_upload = False
        self._said_waiting = False
        self._in_flight = False
        self._taken_at = -TRICKLE_GAP

    @property
    def _uploads(self) -> dict[str, str]:
        uploads: dict[str, str] = self._task.state.extra.get(_UPLOADS, {})
        return uploads

    def _set_upload(self, name: str, state: str) -> None:
        self._task.state.extra[_UPLOADS] = {**self._uploads, name: state}
        self._task.save_state()

    def start(self) -> None:
        """After a restart: announce what an earlier run left for the client and it never took."""
        slot = self._task.slot.path
        if os.path.lexists(slot / TRICKLE_FILE):
            self._announce_trickle = True
        if any(os.path.lexists(slot / f"{UPLOAD_REQUEST_PREFIX}{n}") for n in self._task.job.intermediate_upload_files):
            self._announce_upload = True

    # -- each tick -------------------------------------------------------------------------------
    def receive(self) -> None:
        """Take the client's message on the trickle_down channel, if it says an upload ended.

        Only read once an upload was requested (as the library does): a ``<have_trickle_down/>``
        read here is dropped, since a VM app has no use for trickle-downs."""
        if "requested" not in self._uploads.values():
            return
        self._shm.receive(Channel.TRICKLE_DOWN)  # the status files are read once a second anyway

    # -- once a second ---------------------------------------------------------------------------
    def poll(self, elapsed: float) -> None:
        """Send what is due: periodic and guest trickles, intermediate uploads, announcements."""
        self._periodic_trickle(elapsed)
        self._next_trickle()
        self._request_uploads()
        if "requested" in self._uploads.values():
            self._read_upload_status()
        self._announce()

    def _periodic_trickle(self, elapsed: float) -> None:
        # vboxwrapper's check_trickle_period: the elapsed time, labelled cpu_time
        if self.trickle_period <= 0:
            return
        last = float(self._task.state.extra.get(_LAST_TRICKLE, 0.0))
        if elapsed - last < self.trickle_period:
            return
        self._task.state.extra[_LAST_TRICKLE] = elapsed
        self._task.save_state()
        log.info("trickle-up: elapsed time %.0f s", elapsed)
        # a newer report replaces one still waiting: the project wants the latest elapsed time
        self._periodic.clear()
        self._periodic.append(trickle_text("cpu_time", f"<cpu_time>{elapsed:f}</cpu_time>"))

    def _next_trickle(self) -> None:
        """Write the next trickle into the slot, unless the client still has one to take."""
        slot = self._task.slot.path
        if self._announce_trickle or os.path.lexists(slot / TRICKLE_FILE):
            if not self._said_waiting and (self._periodic or self._guest_trickle_waiting()):
                log.info("a trickle-up waits for the client to take the previous one")
                self._said_waiting = True
            return
        self._said_waiting = False
        now = self._task.clock()
        if self._in_flight:  # the client took the last one
            self._in_flight = False
            self._taken_at = now
        if now - self._taken_at < TRICKLE_GAP:
            return
        # the guest's trickles first: they carry the project's data
        if not self._guest_trickle() and self._periodic:
            self._write_trickle(self._periodic.popleft())

    def _guest_trickle(self) -> bool:
        """Send the first trickle trigger the guest wrote, if any; whether one was sent."""
        shared = self._files.shared_path
        if shared is None:
            return False
        for name in self._task.job.trickle_trigger_files:
            try:
                st = stat_beneath(shared, name)
                if st.st_size > TRICKLE_MAX:
                    raise UnsafeFile(0, f"{st.st_size} bytes, over the trickle bound of {TRICKLE_MAX}", name)
                data = read_bounded(shared, name, TRICKLE_MAX)
            except FileNotFoundError:
                continue
            except UnsafeFile as exc:
                log.warning("trickle trigger refused and deleted: %s", exc)
                self._delete_trigger(shared, name)
                continue
            except OSError as exc:
                log.warning("cannot read the trickle trigger %s: %s", name, exc)
                continue
            text = data.replace(b"\0", b"").decode("utf-8", errors="replace")
            log.info("trickle-up from the guest: %s (%d bytes)", name, len(data))
            self._write_trickle(trickle_text(os.path.basename(name), text))
            self._delete_trigger(shared, name)
            return True
        return False

    def _guest_trickle_waiting(self) -> bool:
        shared = self._files.shared_path
        if shared is None:
            return False
        for name in self._task.job.trickle_trigger_files:
            with contextlib.suppress(OSError):
                stat_beneath(shared, name)
                return True
        return False

    @staticmethod
    def _delete_trigger(shared: Path, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, UnsafeFile):
            unlink_beneath(shared, name)

    def _write_trickle(self, text: str) -> None:
        write_exclusive(self._task.slot.path / TRICKLE_FILE, text.encode("utf-8"))
        self._announce_trickle = True
        self._in_flight = True

    def _request_uploads(self) -> None:
        shared = self._files.shared_path
        if shared is None:
            return
        for name in self._task.job.intermediate_upload_files:
            if name in self._uploads:
                continue
            try:
                stat_beneath(shared, name)
            except FileNotFoundError:
                continue
            except UnsafeFile as exc:
                log.warning("intermediate upload %s refused: %s", name, exc)
                self._set_upload(name, "failed")
                continue
            try:
                size = self._files.copy_to_output(name, name)
            except (UnsafeFile, Fatal) as exc:
                log.warning("intermediate upload %s refused: %s", name, exc)
                self._set_upload(name, "failed")
                continue
            except OSError as exc:
                log.warning("intermediate upload %s: cannot copy it to the result's output: %s", name, exc)
                self._set_upload(name, "failed")
                continue
            write_exclusive(self._task.slot.path / f"{UPLOAD_REQUEST_PREFIX}{name}", b"")
            log.info("intermediate upload requested: %s (%d bytes)", name, size)
            self._set_upload(name, "requested")
            self._announce_upload = True

    def _read_upload_status(self) -> None:
        slot = self._task.slot.path
        for name, state in list(self._uploads.items()):
            if state != "requested":
                continue
            try:
                data = read_bounded(slot, f"{UPLOAD_STATUS_PREFIX}{name}", STATUS_MAX)
            except OSError:
                continue
            match = _STATUS.search(data)
            if match is None:
                continue
            status = int(match.group(1))
            if status == 0:
                log.info("intermediate file uploaded: %s", name)
                self._set_upload(name, "done")
            else:
                log.warning("intermediate upload %s failed on the client (status %d)", name, status)
                self._set_upload(name, "failed")

    def _announce(self) -> None:
        if not (self._announce_trickle or self._announce_upload):
            return
        text = ("<have_new_trickle_up/>\n" if self._announce_trickle else "") + (
            "<have_new_upload_file/>\n" if self._announce_upload else ""
        )
        if self._shm.send(Channel.TRICKLE_UP, text):
            self._announce_trickle = self._announce_upload = False
