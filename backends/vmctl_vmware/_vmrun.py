"""Running vmrun: finding it, argv lists, ``LANG=C``, a timeout on every call.

No verb vmctl uses needs guest credentials, so ``-gu``/``-gp`` are never passed; encrypted VMs,
whose password vmrun takes only on its command line (``-vp``), are refused instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from vmctl.backend.tools import Background, run_tool

from ._errors import VmrunError, check_result

__all__ = ["ENV_VMRUN", "STANDARD_LOCATIONS", "TOOLS_STATES", "Vmrun", "find_vmrun"]

log = logging.getLogger("vmctl.vmware")

ENV_VMRUN = "VMCTL_VMRUN"
#: What ``checkToolsState`` prints (VIX_TOOLSSTATE_*; ``notInstalled`` on some builds).
TOOLS_STATES = ("running", "installed", "unknown", "notInstalled")
#: Where VMware installs vmrun when it is not on PATH.
STANDARD_LOCATIONS = (
    "/usr/bin/vmrun",
    "/usr/local/bin/vmrun",
    "/Applications/VMware Fusion.app/Contents/Library/vmrun",
    "/Applications/VMware Fusion.app/Contents/Public/vmrun",
    r"C:\Program Files (x86)\VMware\VMware Workstation\vmrun.exe",
    r"C:\Program Files\VMware\VMware Workstation\vmrun.exe",
    r"C:\Program Files (x86)\VMware\VMware VIX\vmrun.exe",
)


def find_vmrun(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The vmrun to use: ``explicit``, else ``$VMCTL_VMRUN``, else ``vmrun`` on PATH, else
    VMware's install locations. None if there is none (or an explicit one is not executable)."""
    for candidate in (explicit, os.environ.get(ENV_VMRUN) or None):
        if candidate is not None:
            path = Path(candidate).expanduser()
            return str(path.absolute()) if path.is_file() and os.access(path, os.X_OK) else None
    on_path = shutil.which("vmrun")
    if on_path:
        return on_path
    for location in STANDARD_LOCATIONS:
        if os.path.isfile(location) and os.access(location, os.X_OK):
            return location
    return None


class Vmrun:
    """``vmrun -T <product>`` for one connection."""

    def __init__(self, path: str, product: str) -> None:
        self.path = path
        self.product = product
        self._background = Background()

    def argv(self, verb: str, *args: str | os.PathLike[str]) -> list[str]:
        return [self.path, "-T", self.product, verb, *(os.fspath(a) for a in args)]

    def __call__(self, verb: str, *args: str | os.PathLike[str], timeout: float) -> str:
        """Run one verb and return its stdout; raise VmrunError, or OperationTimeout at the deadline."""
        argv = self.argv(verb, *args)
        proc = run_tool(argv, timeout=max(timeout, 1.0), check=False)
        return check_result(argv, proc.returncode, proc.stdout, proc.stderr)

    def tools_state(self, vmx: str | os.PathLike[str], *, timeout: float) -> str:
        """``checkToolsState``: ``running``, ``installed`` or ``unknown``.

        vmrun prints ``unknown`` for a powered-off VM and exits -2 (254 on POSIX hosts), so the
        word is the answer whatever the status; an ``Error:`` line is still an error.
        """
        argv = self.argv("checkToolsState", vmx)
        proc = run_tool(argv, timeout=max(timeout, 1.0), check=False)
        words = proc.stdout.split()
        if len(words) == 1 and words[0] in TOOLS_STATES:
            return words[0]
        check_result(argv, proc.returncode, proc.stdout, proc.stderr)
        raise VmrunError(
            f"checkToolsState printed {proc.stdout[:200]!r}",
            command=argv,
            status=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )

    def spawn(self, verb: str, *args: str | os.PathLike[str], timeout: float) -> None:
        """Start one verb without waiting; it is killed if still running after ``timeout``.

        For verbs that block until the guest acts (``stop soft``), while the caller watches the
        machine's state itself.
        """
        self._background.spawn(self.argv(verb, *args), timeout=timeout, on_exit=self._check_background)

    @staticmethod
    def _check_background(proc: subprocess.CompletedProcess[str]) -> None:
        try:
            check_result(proc.args, proc.returncode, proc.stdout, proc.stderr)
        except VmrunError as exc:
            log.warning("background %s: %s", proc.args[3], exc.vix_message)

    def close(self) -> None:
        """Kill vmrun processes still running in the background."""
        self._background.close()
