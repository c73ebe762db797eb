"""vmctl-boinc: run a BOINC task's work inside a VM on any vmctl backend.

The BOINC client starts ``vmctl-boinc`` (or ``python -m vmctl.boinc``) as a task's app in the
task's slot directory. It reads the job file shipped with the app version, runs the VM, and
maps the client's control messages onto the vmctl lifecycle interface. See ``docs/boinc.md``.

Modules: :mod:`~vmctl.boinc.shm` (shared-memory channels), :mod:`~vmctl.boinc.initdata`
(``init_data.xml``), :mod:`~vmctl.boinc.slot` (file links, end-of-run files),
:mod:`~vmctl.boinc.job` (job files), :mod:`~vmctl.boinc.state` (the adapter's record in the
slot), :mod:`~vmctl.boinc.adapter` (the main loop, over private modules with one job each),
:mod:`~vmctl.boinc.reaper` (leftover VMs), :mod:`~vmctl.boinc.testing` (a client double for tests).
"""

from vmctl.boinc.adapter import Adapter
from vmctl.boinc.job import Job, JobError, load_job
from vmctl.boinc.state import vm_name_for

__all__ = ["Adapter", "Job", "JobError", "load_job", "vm_name_for"]
