"""What libvirt says when another caller won a race, turned into vmctl's typed answers.

libvirtd runs one domain job at a time, but between two callers' jobs the domain may move: its
QEMU is killed by a ``virDomainDestroy`` while a save or a start is under way, a snapshot is
deleted between its lookup and its use, a listing meets a snapshot half created. libvirt reports
these as failures; vmctl answers them as the state read afterwards says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import libvirt

from vmctl.errors import InvalidState, SnapshotExists, SnapshotNotFound
from vmctl.interface import ALLOWED_FROM
from vmctl.types import Snapshot, State

from ._xml import parse_snapshot

__all__ = ["create_snapshot", "delete_snapshot", "list_snapshots", "raise_if_lost_race", "revert_to"]

log = logging.getLogger("vmctl.libvirt")

#: the domain's QEMU went away under a verb: another caller powered it off or saved it meanwhile
LOST_RACE = (
    "guest unexpectedly quit",
    "unable to read from monitor",
    "process exited while connecting to monitor",
    "qemu unexpectedly closed the monitor",
    "domain is not running",
)
#: another caller's virDomainDestroy stopped the domain while this job ran (libvirt lets a destroy
#: past any other job): QEMU's "terminating on signal", and what the job says when it next talks
#: to QEMU, "domain is no longer running"
STOPPED_MEANWHILE = ("terminating on signal", "domain is no longer running")
#: libvirt 9.0 fails a listing that meets a snapshot being created or deleted
LISTING_RACE = "must not be NULL"
LISTING_PATIENCE = 30.0


def raise_if_lost_race(
    machine: str, exc: libvirt.libvirtError, what: str, verb: str | None, read_state: Callable[[], State]
) -> None:
    """Raise InvalidState if ``exc`` says another caller stopped the domain meanwhile, or says
    the domain went away under ``verb`` and the state now is one the verb is not allowed from;
    return if the hypervisor itself failed."""
    message = exc.get_error_message() or str(exc)
    lowered = message.lower()
    stopped = any(text in lowered for text in STOPPED_MEANWHILE)
    if not stopped and (verb is None or not any(text in lowered for text in LOST_RACE)):
        return
    state = read_state()
    if not stopped and verb is not None and state in ALLOWED_FROM.get(verb, ()):
        return
    doing = verb or what
    log.info("%s: %s lost a race (now %s): %s", machine, doing, state.value, message)
    raise InvalidState(machine, f"{doing} (another caller moved it meanwhile: {what}: {message})", state) from exc


def _snapshot(dom: libvirt.virDomain, machine: str, name: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise SnapshotNotFound(machine, name) from exc
        raise


def create_snapshot(dom: libvirt.virDomain, machine: str, name: str, xml: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotCreateXML(xml, 0)
    except libvirt.libvirtError as exc:
        if "already exists" in (exc.get_error_message() or ""):
            raise SnapshotExists(machine, name) from exc  # taken by a caller outside vmctl
        raise


def delete_snapshot(dom: libvirt.virDomain, machine: str, name: str) -> None:
    try:
        _snapshot(dom, machine, name).delete(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:  # deleted meanwhile
            raise SnapshotNotFound(machine, name) from exc
        raise


def revert_to(dom: libvirt.virDomain, machine: str, snapshot: Snapshot) -> None:
    snap = _snapshot(dom, machine, snapshot.name)
    if not dom.isActive() and dom.hasManagedSaveImage(0):
        # A revert replaces the current state; libvirt would otherwise keep the saved one.
        dom.managedSaveRemove(0)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if snapshot.has_memory else 0
    try:
        dom.revertToSnapshot(snap, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:  # deleted meanwhile
            raise SnapshotNotFound(machine, snapshot.name) from exc
        raise


def list_snapshots(dom: libvirt.virDomain) -> list[Snapshot]:
    """The domain's snapshots, skipping any deleted while they are listed.

    libvirt 9.0 refuses a whole listing while one snapshot is being taken (its name is not set
    yet: "name in virGetDomainSnapshot must not be NULL"); a memory snapshot takes seconds, so
    the listing is tried again until it is through, for at most ``LISTING_PATIENCE`` seconds.
    """
    deadline = time.monotonic() + LISTING_PATIENCE
    pause = 0.01
    while True:
        try:
            found = []
            for snap in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL):
                try:
                    found.append(parse_snapshot(snap.getXMLDesc(0)))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:  # not deleted since
                        raise
            return found
        except libvirt.libvirtError as exc:
            if LISTING_RACE not in (exc.get_error_message() or "") or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
