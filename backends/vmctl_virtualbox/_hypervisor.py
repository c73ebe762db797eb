"""VirtualBoxHypervisor: VirtualBox through VBoxManage or the SDK's vboxapi, and connecting to it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from vmctl.backend.store import default_state_dir
from vmctl.errors import (
    BackendError,
    BackendUnavailable,
    InvalidSpec,
    MachineExists,
    MachineNotFound,
    OperationTimeout,
    Unsupported,
)
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, MachineSpec, validate_name

from ._machine import OSTYPE, SPEC_KEY, VirtualBoxMachine, dump
from ._transport import Transport

__all__ = ["VirtualBoxHypervisor", "open_hypervisor"]

log = logging.getLogger("vmctl.virtualbox")


SYMLINKS_KEY = "VBoxInternal2/SharedFoldersEnableSymlinksCreate/"
"""Per shared folder; symlink creation by the guest stays off."""


class VirtualBoxHypervisor(Hypervisor):
    """VirtualBox through one :class:`Transport`; machines live in ``base_folder/<name>/``."""

    name = "virtualbox"

    def __init__(self, transport: Transport, base_folder: Path, settle_timeout: float = 60) -> None:
        self.transport = transport
        self.base_folder = Path(base_folder).expanduser().absolute()
        self.settle_timeout = settle_timeout

    _feature_notes = {
        "kernel_boot": "VirtualBox cannot boot a kernel directly; give a bootable disk image",
        "remote_desktop": "VirtualBox's remote desktop (VRDE) needs the extension pack that provides VBoxVRDP "
        "(VBoxManage list extpacks) and the VBoxManage transport",
    }

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            cpu_limit=True,
            usage_fields=frozenset({"cpu_seconds", "memory_bytes", "disk_read_bytes", "disk_write_bytes"}),
            kernel_boot=False,
            disk_usage=True,
            screenshot=self.transport.screenshots,
            remote_desktop=self.transport.remote_desktop_available(),
        )

    def _do_create(self, spec: MachineSpec) -> Machine:
        if spec.disk is None:
            raise InvalidSpec("disk", "VirtualBox machines need a disk image")
        t = self.transport
        if spec.name in t.list_vms():
            raise MachineExists(spec.name, "virtualbox")
        self.base_folder.mkdir(parents=True, exist_ok=True)
        folder = self.base_folder / spec.name
        try:
            t.create_vm(spec.name, self.base_folder, OSTYPE)
        except BackendError as exc:
            if exc.native in ("VBOX_E_FILE_ERROR", "VBOX_E_OBJECT_IN_USE") or spec.name in t.list_vms():
                raise MachineExists(spec.name, "virtualbox") from exc
            raise
        try:
            t.configure(
                spec.name,
                memory_mib=spec.memory_mib,
                cpus=spec.cpus,
                network=spec.network,
                serial_log=spec.serial_log,
            )
            if spec.remote_desktop:
                t.enable_remote_desktop(spec.name)
            t.attach_disk(spec.name, spec.disk, multiattach=spec.overlay)
            for tag, path in spec.shared_dirs.items():
                t.add_shared_folder(spec.name, tag, path, readonly=tag in spec.readonly_shares)
                # VirtualBox creates host symlinks for the guest only where this key is "1"
                t.set_extradata(spec.name, SYMLINKS_KEY + tag, "0")
            t.set_extradata(spec.name, SPEC_KEY, dump(spec.to_dict()))
        except BaseException:
            log.warning("%s: creation failed; removing the half-made VM", spec.name)
            try:
                if not spec.overlay:
                    try:
                        t.detach_disk(spec.name)
                    except BackendError:
                        pass
                t.unregister_delete(spec.name, 60)
            except Exception as cleanup_exc:
                log.warning("%s: cleanup after failed create failed too: %s", spec.name, cleanup_exc)
            if folder.is_dir() and not (folder / f"{spec.name}.vbox").exists():
                shutil.rmtree(folder, ignore_errors=True)
            raise
        machine = VirtualBoxMachine(self, spec.name)
        machine._spec = spec
        return machine

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        """``VBoxManage import`` of the appliance as vmctl unpacked and checked it (VirtualBox
        reads the descriptor and disks from vmctl's private directory, never the archive), then
        the settings vmctl gives every machine (memory, CPUs, NAT or no NIC, serial log, boot
        from disk) and vmctl's extradata. The stored spec names the disk VirtualBox made in the
        VM's folder, with ``overlay=True``: the appliance itself is never written, and
        ``destroy`` deletes that disk with the VM (``unregistervm --delete``)."""
        from vmctl.appliance import open_appliance
        from vmctl.backend.appliance import appliance_name, appliance_spec, refuse_features, single_disk

        t = self.transport
        with open_appliance(path, workdir=self._unpack_dir()) as opened:
            chosen = appliance_name(opened.appliance, name)
            disk = single_disk(opened.appliance, self.name)
            if opened.appliance.cdroms:
                raise Unsupported(self.name, "import_appliance", "the appliance attaches CD/DVD images")
            draft = appliance_spec(opened, chosen, opened.disk_paths[disk.disk_id], spec)
            refuse_features(self, draft)
            if chosen in t.list_vms():
                raise MachineExists(chosen, "virtualbox")
            self.base_folder.mkdir(parents=True, exist_ok=True)
            try:
                disks = t.import_appliance(opened.descriptor, chosen, self.base_folder, timeout)
            except BackendError as exc:
                if exc.native in ("VBOX_E_FILE_ERROR", "VBOX_E_OBJECT_IN_USE") or chosen in t.list_vms():
                    raise MachineExists(chosen, "virtualbox") from exc
                raise
            try:
                if len(disks) != 1:
                    raise BackendError(f"VBoxManage import reported {len(disks)} disks for {chosen!r}, not one")
                final = appliance_spec(opened, chosen, disks[0], spec)
                t.configure(
                    chosen,
                    memory_mib=final.memory_mib,
                    cpus=final.cpus,
                    network=final.network,
                    serial_log=final.serial_log,
                )
                for tag, share in final.shared_dirs.items():
                    t.add_shared_folder(chosen, tag, share, readonly=tag in final.readonly_shares)
                    t.set_extradata(chosen, SYMLINKS_KEY + tag, "0")
                t.set_extradata(chosen, SPEC_KEY, dump(final.to_dict()))
            except BaseException:
                log.warning("%s: import failed; removing the imported VM", chosen)
                try:
                    t.unregister_delete(chosen, 60)
                except Exception as cleanup_exc:
                    log.warning("%s: cleanup after failed import failed too: %s", chosen, cleanup_exc)
                raise
        machine = VirtualBoxMachine(self, chosen)
        machine._spec = final
        return machine

    def _unpack_dir(self) -> Path:
        self.base_folder.mkdir(parents=True, exist_ok=True)
        return self.base_folder

    def _machine_names(self) -> list[str]:
        names = []
        for name in self.transport.list_vms():
            try:
                validate_name(name)
            except InvalidSpec:
                continue
            try:
                if self.transport.get_extradata(name, SPEC_KEY) is not None:
                    names.append(name)
            except MachineNotFound:
                continue
        return names

    def _all_machine_names(self) -> list[str]:
        names = []
        for name in self.transport.list_vms():
            try:
                names.append(validate_name(name))
            except InvalidSpec:
                continue
        return names

    def _open_machine(self, name: str) -> Machine:
        """vmctl's VM or any other VirtualBox knows by that name (adopted); MachineNotFound if none."""
        self.transport.get_extradata(name, SPEC_KEY)  # raises MachineNotFound for no such VM
        return VirtualBoxMachine(self, name)

    def close(self) -> None:
        self.transport.close()

    def __repr__(self) -> str:
        return f"<VirtualBoxHypervisor via {self.transport.name}>"


def open_hypervisor(
    *,
    vboxmanage: str | Path | None = None,
    transport: str = "auto",
    base_folder: str | Path | None = None,
    timeout: float = 120,
    retries: int = 5,
    retry_delay: float = 0.5,
    settle_timeout: float = 60,
    env: dict[str, str] | None = None,
) -> VirtualBoxHypervisor:
    """Connect to VirtualBox (see :func:`vmctl_virtualbox.provider`'s options)."""
    if transport not in ("auto", "vboxmanage", "vboxapi"):
        raise InvalidSpec("transport", f"{transport!r} is not 'auto', 'vboxmanage' or 'vboxapi'")
    folder = Path(base_folder) if base_folder is not None else default_state_dir("virtualbox") / "machines"
    chosen: Transport | None = None
    if transport == "vboxapi" or (transport == "auto" and vboxmanage is None):
        try:
            from ._vboxapi import VBoxApiTransport

            api = VBoxApiTransport()
            log.info("VirtualBox %s reached through vboxapi", api.version())
            chosen = api
        except Exception as exc:
            if transport == "vboxapi":
                raise BackendUnavailable(
                    "virtualbox",
                    f"the vboxapi transport is not usable: {exc}",
                    "the Python bindings of the VirtualBox SDK (sdk/installer/python: python vboxapisetup.py install)",
                ) from exc
            log.debug("vboxapi not usable (%s); using VBoxManage", exc)
    if chosen is None:
        from ._vboxmanage import VBoxManageTransport, find_vboxmanage

        exe = str(vboxmanage) if vboxmanage is not None else find_vboxmanage()
        if exe is None:
            raise BackendUnavailable(
                "virtualbox",
                "VBoxManage was not found on PATH",
                "VirtualBox 7 from https://www.virtualbox.org (or pass vboxmanage=PATH)",
            )
        vbm = VBoxManageTransport(exe, timeout=timeout, retries=retries, retry_delay=retry_delay, env=env)
        try:
            version = vbm.version()
        except (BackendError, OperationTimeout) as exc:
            raise BackendUnavailable("virtualbox", f"{exe} does not work: {exc}") from exc
        major = version.split(".", 1)[0]
        if major.isdigit() and int(major) < 7:
            log.warning("VirtualBox %s is older than 7; vmctl is tested against VirtualBox 7's formats", version)
        log.info("VirtualBox %s reached through %s", version, exe)
        chosen = vbm
    return VirtualBoxHypervisor(chosen, folder, settle_timeout=settle_timeout)
