"""The BOINC adapter's errors, under vmctl's error tree.

>>> import vmctl
>>> from vmctl.boinc.errors import BoincError
>>> from vmctl.boinc.job import JobError
>>> issubclass(JobError, BoincError) and issubclass(BoincError, vmctl.VmctlError)
True
"""

from __future__ import annotations

from vmctl.errors import VmctlError

__all__ = ["BoincError"]


class BoincError(VmctlError):
    """Base class of the errors of ``vmctl.boinc``: a task's files or the client's channel are unusable.

    Its subclasses are :class:`~vmctl.boinc.job.JobError`, :class:`~vmctl.boinc.slot.SlotError`,
    :class:`~vmctl.boinc.initdata.InitDataError`, :class:`~vmctl.boinc.hostconfig.HostConfigError`
    and :class:`~vmctl.boinc.shm.SharedMemoryError`.
    """
