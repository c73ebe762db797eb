"""The slot directory: resolving the client's file links, and the files that end a run.

The client puts each app, input and output file in the slot (``slots/N``) under its "open name"
either as a symbolic link or as a one-line file ``<soft_link>../../projects/X/file</soft_link>``
(relative to the slot). :func:`resolve` follows both, so the adapter opens the project's copy
and never duplicates a multi-GB disk image.

A run ends with one of (read by the client when the app exits):

- ``boinc_finish_called``: ``<status>\\n`` [``<message>\\n<notice or empty>\\n``], then exit
  ``status``; with 0 the task is done.
- ``boinc_temporary_exit``: ``<delay seconds>\\n<reason>\\n`` [``notice\\n``], then exit 0; the
  client retries the task after the delay. Without a reason line the client ignores the file.

>>> import pathlib, tempfile
>>> boinc = pathlib.Path(tempfile.mkdtemp())
>>> slot = Slot(boinc / "slots" / "0", project_dir=boinc / "projects" / "p")
>>> slot.path.mkdir(parents=True)
>>> _ = (slot.path / "job.toml").write_text("<soft_link>../../projects/p/job.toml</soft_link>\\n")
>>> slot.resolve("job.toml") == boinc / "projects" / "p" / "job.toml"
True
>>> _ = (slot.path / "key").write_text("<soft_link>/etc/shadow</soft_link>\\n")
>>> slot.resolve("key")
Traceback (most recent call last):
...
vmctl.boinc.slot.SlotError: 'key' stands for /etc/shadow, outside the project directory and the slot
>>> slot.write_temporary_exit(60, "hypervisor busy")
>>> (slot.path / TEMPORARY_EXIT_FILE).read_text()
'60\\nhypervisor busy\\n'
>>> import shutil; shutil.rmtree(boinc)
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from vmctl.backend.store import atomic_write
from vmctl.boinc.errors import BoincError

__all__ = [
    "FINISH_FILE",
    "MAX_TEMPORARY_DELAY",
    "STATE_FILE",
    "TEMPORARY_EXIT_FILE",
    "Slot",
    "SlotError",
]

FINISH_FILE = "boinc_finish_called"
TEMPORARY_EXIT_FILE = "boinc_temporary_exit"
#: The adapter's own record in the slot (checkpoint, saved state, CPU time base).
STATE_FILE = "vmctl_state.json"
#: The client replaces a temporary-exit delay outside 0..86400 s by 300 s.
MAX_TEMPORARY_DELAY = 86400

_SOFT_LINK = re.compile(r"<soft_link>\s*(.*?)\s*</soft_link>", re.S)
_SOFT_LINK_MAX = 4096


class SlotError(BoincError):
    """A file name that is not a plain relative name inside the slot."""


class Slot:
    """One slot directory (the app's working directory). Its links may lead into the slot and
    the project directory (``project_dir``; unknown: any project of the BOINC data directory,
    ``<slot>/../../projects``), nowhere else."""

    def __init__(self, path: Path, project_dir: str | Path | None = None) -> None:
        self.path = Path(path).absolute()
        self.project_dir = Path(project_dir).absolute() if project_dir else None

    def __repr__(self) -> str:
        return f"Slot({str(self.path)!r})"

    @property
    def roots(self) -> tuple[Path, ...]:
        """The directories the slot's files may stand for files in."""
        projects = self.project_dir or self.path.parent.parent / "projects"
        return (self.path, projects)

    def file(self, name: str) -> Path:
        """``name`` in the slot itself (no link resolution); refuses names that leave the slot."""
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts:
            raise SlotError(f"{name!r} is not a file name inside the slot")
        return self.path / rel

    def resolve(self, name: str) -> Path:
        """The file the slot's ``name`` stands for: a symlink's target, a soft-link file's target,
        or the slot's own file. The result may not exist (a dangling link); the caller checks.
        A target outside the project directory and the slot (after every link on the way) is a
        :class:`SlotError`."""
        target = self._target(name)
        real = os.path.realpath(target)
        for root in self.roots:
            if os.path.commonpath([real, os.path.realpath(root)]) == os.path.realpath(root):
                return target
        raise SlotError(f"{name!r} stands for {target}, outside the project directory and the slot")

    def _target(self, name: str) -> Path:
        path = self.file(name)
        if path.is_symlink():
            return Path(os.path.normpath(path.parent / os.readlink(path)))
        try:
            if path.is_file() and path.stat().st_size <= _SOFT_LINK_MAX:
                with open(path, "rb") as f:
                    head = f.read(_SOFT_LINK_MAX).decode("utf-8", errors="replace")
                match = _SOFT_LINK.match(head.lstrip())
                if match:
                    # Relative to the slot (the client writes ../../projects/...).
                    return Path(os.path.normpath(self.path / match.group(1)))
        except OSError:
            pass
        return path

    # -- ending a run ---------------------------------------------------------------------------
    def write_finish(self, status: int = 0, message: str | None = None, notice: bool = False) -> None:
        """Write ``boinc_finish_called`` (the caller then exits with ``status``)."""
        text = f"{status}\n"
        if message:
            text += f"{_one_line(message)}\n{'notice' if notice else ''}\n"
        atomic_write(self.path / FINISH_FILE, text.encode())

    def write_temporary_exit(self, delay: float, reason: str, notice: bool = False) -> None:
        """Write ``boinc_temporary_exit`` (the caller then exits 0)."""
        seconds = max(0, min(round(delay), MAX_TEMPORARY_DELAY))
        text = f"{seconds}\n{_one_line(reason) or 'temporary exit'}\n"
        if notice:
            text += "notice\n"
        atomic_write(self.path / TEMPORARY_EXIT_FILE, text.encode())

    def remove_end_files(self) -> None:
        """Remove end-of-run files a previous run may have left."""
        for name in (FINISH_FILE, TEMPORARY_EXIT_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()


def _one_line(text: str) -> str:
    # The client reads the reason with fgets into 256 bytes and strips it.
    return " ".join(text.split())[:250]
