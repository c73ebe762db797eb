"""The libvirt backend: vmctl on any libvirt URI, on this host or another one.

``vmctl.connect("libvirt", uri="qemu:///system")`` (the default URI), ``uri="test:///default"``
(libvirt's in-process mock driver) or a remote URI such as ``qemu+ssh://root@host/system``: the
same verbs everywhere. Needs libvirt-python (``pip install vmctl[libvirt]``).

- **Whose domains.** A domain is vmctl's only if vmctl defined it: it carries a
  ``<vmctl:machine xmlns:vmctl="urn:vmctl:machine:1">`` metadata element holding the spec as
  JSON. Other domains on the same daemon are never listed or touched.
- **Disks.** A qcow2 overlay per machine with the base image as its backing file. Locally vmctl
  runs ``qemu-img`` into ``state_dir`` (default ``/var/lib/libvirt/images/vmctl`` for
  ``qemu:///system``); on a remote URI the overlay is a volume of the storage pool ``pool``
  (default ``vmctl`` at ``/var/lib/libvirt/images/vmctl`` on that host, created if missing) and
  image paths are paths on that host.
- **Permissions.** The daemon's QEMU runs as ``libvirt-qemu``. libvirt's own DAC labelling gives
  it the overlay, kernel and initrd while the machine runs; the base image is marked
  ``relabel='no'`` so that a shared base is never chowned, and must be world-readable. For local
  ``qemu:///system`` vmctl refuses at ``create`` images and shares whose directories that user
  cannot reach (``check_access=False`` turns the check off).
- **Verbs.** pause/resume = suspend/resume; suspend = managed save (``start`` restores it);
  stop = ACPI power button, then destroy; restart = reboot with the ACPI flag (completion seen as
  libvirt's reboot event) or reset; snapshots = internal qcow2 snapshots; network toggle = the
  NIC's link state. ``usage_all()`` is one ``virConnectGetAllDomainStats`` call.
- **Events.** Lifecycle and reboot events arrive on an event-loop thread: ``wait_for`` blocks on
  them instead of polling. A lost connection (libvirtd restarted) is re-opened on the next call.
- **Port forwards.** libvirt 9.0 cannot express forwards of user-mode networking in XML (passt's
  ``<portForward>`` arrived in 9.2), so on QEMU vmctl adds them with the monitor command
  ``hostfwd_add`` (bound to 127.0.0.1) after each start; libvirt marks such domains "tainted".
- Options: ``uri``, ``state_dir``, ``pool``, ``pool_path``, ``accel`` ("tcg" or "kvm"),
  ``machine_type`` ("q35"), ``check_access``, ``keepalive`` ((interval s, count)).

>>> import vmctl
>>> hv = vmctl.connect("libvirt", uri="test:///default")
>>> hv.capabilities.events, [vm.name for vm in hv.machines()]
(True, [])
>>> hv.close()
"""

from __future__ import annotations

import os
from typing import Any

from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option

__all__ = ["provider"]


def _pair(text: str) -> tuple[int, int]:
    interval, _, count = text.partition(",")
    return int(interval), int(count)


class _Provider(BackendProvider):
    name = "libvirt"
    description = "any libvirt URI (qemu:///system, qemu+ssh://host/system, test:///default) via libvirt-python"
    python_modules = (("libvirt", "pip install vmctl[libvirt]"),)
    options = (
        Option("uri", str, "qemu:///system", "the libvirt connection URI"),
        Option("state_dir", (str, os.PathLike), None, "where local overlays go"),
        Option("pool", str, "vmctl", "the storage pool of overlays on a remote URI"),
        Option("pool_path", str, "/var/lib/libvirt/images/vmctl", "that pool's directory, if vmctl creates it"),
        Option("accel", str, "tcg", '"tcg" or "kvm"'),
        Option("machine_type", str, "q35", "the domain's machine type"),
        Option("check_access", bool, True, "refuse images libvirt's QEMU user cannot read (local qemu:///system)"),
        Option("keepalive", tuple, (5, 3), "(interval s, count); on a command line INTERVAL,COUNT", _pair),
    )

    def open(self, **options: Any) -> Hypervisor:
        from ._hypervisor import LibvirtHypervisor

        return LibvirtHypervisor(**options)


provider = _Provider()
