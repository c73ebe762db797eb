"""VMware Workstation, Player and Fusion, driven through ``vmrun``.

``vmctl.connect("vmware", product="ws" | "player" | "fusion", vmrun=None, vm_dir=None)`` runs
``vmrun -T <product>`` (found as ``vmrun=``, ``$VMCTL_VMRUN``, on PATH, or where VMware installs
it). Each machine is a directory ``<vm_dir>/<name>/`` holding its ``.vmx`` and vmctl's record.

Providing a base: ``MachineSpec.disk`` is either

- a ``.vmdk`` disk (a VMware disk with the guest installed). vmctl wraps it once in a small base
  VM under ``<vm_dir>/.bases/`` that names the disk where it lies, takes that VM's snapshot
  ``vmctl-base``, and makes each machine a linked clone of it (``vmrun clone ... linked
  -snapshot=vmctl-base``): the machine writes to its own small delta disk and the ``.vmdk`` is
  never copied or changed. Or
- a base VM's ``.vmx`` (powered off, not encrypted), for a guest that needs more than a disk:
  vmctl takes its snapshot ``vmctl-base`` the first time and clones from it. Do not delete that
  snapshot or the base while clones exist; vmctl never does.

Images in other formats convert with ``qemu-img convert -O vmdk in.qcow2 out.vmdk``.

What maps to what: start = ``start nogui`` (from SUSPENDED it resumes); pause/resume =
``pause``/``unpause``; suspend = ``suspend hard`` (state to disk, no process left); stop =
``stop soft`` (a shutdown through VMware Tools in the guest) then ``stop hard`` at the deadline;
poweroff = ``stop hard``, and from SUSPENDED vmctl deletes the ``.vmss`` and the
``checkpoint.vmState`` key, as vmrun cannot power off a suspended VM; restart = ``reset soft``
(graceful, needs Tools) or ``reset hard``; snapshots = ``snapshot``/``listSnapshots``/
``revertToSnapshot``/``deleteSnapshot`` (a snapshot of a running VM includes its memory);
network toggle = ``disconnectNamedDevice``/``connectNamedDevice ethernet0``; usage = the
vmware-vmx process found by its command line, through psutil.

``.vmx`` files are read and written as VMware's own dictionary code does (open-vm-tools
``lib/dict/dictll.c``): ``key = value`` with or without quotes, ``# comments`` after a value or on
their own line, ``|22``-style byte escapes, keys in any case. vmctl changes a key where it stands
(a trailing comment kept, never a second copy of it) and leaves every other line byte for byte. A
file keeps the character set its ``.encoding`` line names (``windows-1252``, ``Shift_JIS``,
VMware's ``windows-949-2000``, ...); a value that set cannot hold turns the file into UTF-8, and a
set Python does not know raises ``VmxEncodingError`` (a ``BackendError``) with the file unchanged.
Beyond the common verbs a machine offers ``tools_state()`` (``vmrun checkToolsState``:
``running``, ``installed``, or ``unknown`` for a powered-off VM, which vmrun reports with exit
status -2) and ``guest_address(wait=False)`` (``vmrun getGuestIPAddress [-wait]``).

Not supported: direct kernel boot, port forwards (vmrun only edits the host-wide NAT network),
encrypted VMs (vmrun takes their password only on its command line), CPU caps; on Player also
snapshots, pause and overlays (its vmrun refuses snapshots, pause and clone: use
``overlay=False``, which runs the machine on the disk itself). No verb needs guest credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option

__all__ = ["provider"]

HINT = "install VMware Workstation, Player or Fusion, or set VMCTL_VMRUN to vmrun's path"


class _Provider(BackendProvider):
    name = "vmware"
    description = "VMware Workstation, Player and Fusion through vmrun"
    options = (
        Option("product", str, "ws", '"ws", "player" or "fusion" (vmrun -T)'),
        Option("vmrun", (str, os.PathLike), None, "the vmrun executable"),
        Option("vm_dir", (str, os.PathLike), None, "where machines live"),
    )

    def unavailable(self) -> tuple[str, str | None] | None:
        from vmctl_vmware._vmrun import find_vmrun

        if find_vmrun() is None:
            return "vmrun was not found ($VMCTL_VMRUN, PATH, VMware's install locations)", HINT
        return None

    def checks_availability_itself(self, options: Mapping[str, Any]) -> bool:
        return options.get("vmrun") is not None

    def open(self, **options: Any) -> Hypervisor:
        from vmctl_vmware._hypervisor import VmwareHypervisor

        return VmwareHypervisor(**options)


provider = _Provider()
