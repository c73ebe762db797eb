"""The vSphere backend: VMs on an ESXi host or a vCenter, through the vSphere API (pyvmomi).

>>> import vmctl
>>> "vsphere" in [b.name for b in vmctl.backends()]
True

Connect with ``vmctl.connect("vsphere", host=..., user=..., ...)``. The password comes from
``password=``, from the environment variable named by ``password_env=`` (default
``VMCTL_VSPHERE_PASSWORD``) or from the first line of ``password_file=``; it is never needed on a
command line. Options:

- ``port=443``, ``verify_tls=True``, ``ca_file=`` (a PEM bundle to trust, e.g. the vCenter's CA),
  ``timeout=60`` (seconds for each API call; each verb also has its own deadline for its task);
- ``datacenter=`` (needed when there are several), ``folder=`` (a VM folder path such as
  ``"vmctl/jobs"``; vmctl's machines are the VMs in it, recursively; created on first use);
- for new machines: ``datastore=`` (default: the accessible one with most free space),
  ``resource_pool=`` (a resource pool or cluster name), ``esx_host=``, ``network=`` (a port
  group; default ``VM Network``), ``guest_id="otherGuest64"``.

``create`` uploads ``spec.disk`` (a raw image or a flat VMDK) once per datastore under
``vmctl-images/<digest>/`` and gives each machine a delta disk over it (``overlay=True``) or a
full copy (``overlay=False``). vSphere has no pause; a graceful stop or reboot needs VMware Tools
in the guest (:class:`ToolsUnavailable` otherwise). Usage comes from ``summary.quickStats`` and
the performance manager's real-time samples since boot.
"""

from __future__ import annotations

import os
from typing import Any

from vmctl.errors import BackendUnavailable
from vmctl.interface import Hypervisor
from vmctl.registry import REQUIRED, BackendProvider, Option

from ._errors import ToolsUnavailable

__all__ = ["ToolsUnavailable", "provider"]

HINT = "pip install vmctl[vsphere]"


class _Provider(BackendProvider):
    name = "vsphere"
    description = "VMware ESXi and vCenter through the vSphere API (pyvmomi)"
    python_modules = (("pyVmomi", HINT),)
    options = (
        Option("host", str, REQUIRED, "the ESXi host or vCenter (a name or address)"),
        Option("user", str, None, "the user name (default: $VMCTL_VSPHERE_USER)"),
        Option("password", str, None, "the password (prefer password_env or password_file)"),
        Option("password_env", str, None, "the environment variable holding the password"),
        Option("password_file", (str, os.PathLike), None, "a file whose first line is the password"),
        Option("port", int, 443, "the HTTPS port"),
        Option("verify_tls", bool, True, "verify the server's certificate"),
        Option("ca_file", (str, os.PathLike), None, "a PEM bundle to trust"),
        Option("datacenter", str, None, "the datacenter (needed when there are several)"),
        Option("folder", str, None, "the VM folder path of vmctl's machines"),
        Option("datastore", str, None, "the datastore of new machines"),
        Option("resource_pool", str, None, "a resource pool or cluster name"),
        Option("esx_host", str, None, "the host of new machines"),
        Option("network", str, None, "the port group of new machines"),
        Option("guest_id", str, "otherGuest64", "the guest OS identifier of new machines"),
        Option("timeout", float, 60, "seconds for each API call"),
    )

    def open(self, **options: Any) -> Hypervisor:
        try:
            from ._hypervisor import open_hypervisor
        except ImportError as exc:
            raise BackendUnavailable(self.name, f"pyvmomi cannot be imported: {exc}", HINT) from exc
        return open_hypervisor(**options)


provider = _Provider()
