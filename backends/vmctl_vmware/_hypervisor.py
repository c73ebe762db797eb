"""A connection to VMware Workstation, Player or Fusion on this host, through vmrun."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vmctl.backend.locking import flocked
from vmctl.backend.store import MachineStore, atomic_write, default_state_dir
from vmctl.errors import BackendUnavailable, InvalidSpec, MachineExists, MachineNotFound, Unsupported, VmctlError
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, MachineSpec

from ._machine import QUERY_TIMEOUT, VmwareMachine, parse_count_list
from ._vmrun import ENV_VMRUN, Vmrun, find_vmrun
from ._vmx import VmxFile, apply_spec, new_vmx

__all__ = ["BASE_SNAPSHOT", "PRODUCTS", "VmwareHypervisor"]

log = logging.getLogger("vmctl.vmware")

PRODUCTS = ("ws", "player", "fusion")
#: The snapshot of a base VM that linked clones are made from; vmctl never deletes it.
BASE_SNAPSHOT = "vmctl-base"
BASES_DIR = ".bases"
CLONE_TIMEOUT = 600.0
USAGE_FIELDS = frozenset({"cpu_seconds", "memory_bytes", "disk_read_bytes", "disk_write_bytes"})
_CAPABILITIES = Capabilities(usage_fields=USAGE_FIELDS, kernel_boot=False, port_forwards=False, disk_usage=True)


class VmwareHypervisor(Hypervisor):
    """VMs in ``vm_dir`` (one directory each), driven with ``vmrun -T <product>``.

    ``product`` is ``"ws"`` (Workstation), ``"player"`` or ``"fusion"``; ``vmrun`` the tool's path
    (default: ``$VMCTL_VMRUN``, then PATH, then VMware's install locations); ``vm_dir`` where
    machines live (default ``$VMCTL_STATE_DIR/vmware`` or ``~/.local/state/vmctl/vmware``).
    """

    name = "vmware"
    _feature_notes = {
        "kernel_boot": "VMware boots the VM's disk; give a .vmdk or a base .vmx",
        "port_forwards": "vmrun's setPortForwarding edits the host-wide NAT network, not one VM",
        "overlay": "Player's vmrun has no clone verb; use overlay=False",
    }

    def __init__(
        self,
        product: str = "ws",
        vmrun: str | os.PathLike[str] | None = None,
        vm_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if product not in PRODUCTS:
            raise InvalidSpec("product", f"{product!r} is not one of {', '.join(PRODUCTS)}")
        path = find_vmrun(vmrun)
        if path is None:
            where = f"{vmrun!s} is not an executable file" if vmrun is not None else "vmrun was not found"
            raise BackendUnavailable(
                "vmware", where, f"install VMware Workstation, Player or Fusion, or set {ENV_VMRUN} to vmrun's path"
            )
        self.product = product
        self.vmrun = Vmrun(path, product)
        self.store = MachineStore(Path(vm_dir) if vm_dir is not None else default_state_dir("vmware"), "vmware")

    def __repr__(self) -> str:
        return f"<VmwareHypervisor {self.product} {self.store.root}>"

    @property
    def capabilities(self) -> Capabilities:
        if self.product == "player":
            # VIX documents snapshots, pause/unpause and clone as unsupported on Player.
            return _CAPABILITIES.without("pause", "snapshots", "live_snapshots", "overlay")
        return _CAPABILITIES

    def close(self) -> None:
        self.vmrun.close()

    # -- machines -------------------------------------------------------------------------
    def adopt(self, name: str, vmx: str | Path) -> Machine:
        """Adopt the VM of ``vmx`` (a ``.vmx`` vmctl did not make, left where it is) as machine
        ``name``; afterwards ``hv.machine(name)`` opens it from any process using this ``vm_dir``.
        See :mod:`vmctl_vmware._adopt`. Raises :class:`MachineExists` if the name is taken."""
        from ._adopt import adopt

        return adopt(self, name, vmx)

    def _machine_names(self) -> list[str]:
        return [name for name in self.store.names() if not self._is_adopted(name)]

    def _all_machine_names(self) -> list[str]:
        return self.store.names()

    def _is_adopted(self, name: str) -> bool:
        try:
            return "adopted" in self.store.read(name)
        except VmctlError:
            return False

    def _open_machine(self, name: str) -> Machine:
        if not self.store.exists(name):
            raise MachineNotFound(name, "vmware")
        return VmwareMachine(self, name)

    def _check_spec(self, spec: MachineSpec) -> None:
        if spec.disk is None:
            raise InvalidSpec("disk", "the vmware backend needs a .vmdk disk or a base VM's .vmx")
        suffix = spec.disk.suffix.lower()
        if suffix not in (".vmdk", ".vmx"):
            raise InvalidSpec("disk", f"{spec.disk} is not a .vmdk or .vmx (convert with: qemu-img convert -O vmdk)")
        if suffix == ".vmx" and not spec.overlay:
            raise InvalidSpec("overlay", "a base .vmx is used through linked clones only (overlay=True)")
        if suffix == ".vmx" and VmxFile.load(spec.disk).is_encrypted():
            raise Unsupported("vmware", "encrypted VMs", "vmrun takes their password only on its command line (-vp)")

    def _do_create(self, spec: MachineSpec) -> Machine:
        self._check_spec(spec)
        if self.store.exists(spec.name):
            raise MachineExists(spec.name, "vmware")
        assert spec.disk is not None
        base = self._ensure_base(spec.disk) if spec.overlay else None
        with self.store.creating(spec.name) as tmp:
            vmx_path = tmp / f"{spec.name}.vmx"
            if base is not None:
                self.vmrun(
                    "clone",
                    base,
                    vmx_path,
                    "linked",
                    f"-snapshot={BASE_SNAPSHOT}",
                    f"-cloneName={spec.name}",
                    timeout=CLONE_TIMEOUT,
                )
                vmx = VmxFile.load(vmx_path)
            else:
                vmx = new_vmx(spec.name, spec.disk)
            apply_spec(vmx, spec)
            vmx.save(vmx_path)
            record = {
                "spec": spec.to_dict(),
                "product": self.product,
                "base": str(base) if base is not None else None,
                "created": time.time(),
                "paused": False,
                "snapshots": {},
                "current": None,
            }
            atomic_write(tmp / "machine.json", json.dumps(record, indent=1, sort_keys=True).encode())
        return VmwareMachine(self, spec.name)

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        from ._appliance import import_appliance

        return import_appliance(self, path, name, spec, timeout)

    # -- base VMs for linked clones ---------------------------------------------------------
    def _ensure_base(self, disk: Path) -> Path:
        """The base VM linked clones of ``disk`` come from, with its snapshot ``vmctl-base``.

        A ``.vmdk`` is wrapped once in a small VM under ``<vm_dir>/.bases/``, which names the disk
        where it is (never copied); a ``.vmx`` is used as it is. Either gets the snapshot once.
        """
        if disk.suffix.lower() == ".vmx":
            base = disk
        else:
            bases = self.store.root / BASES_DIR
            bases.mkdir(exist_ok=True, mode=0o700)
            key = hashlib.sha256(str(disk).encode()).hexdigest()[:16]
            base = bases / key / "base.vmx"
            with flocked(bases / ".lock", "lock on the base VMs", CLONE_TIMEOUT):
                if not base.exists():
                    tmp = Path(tempfile.mkdtemp(dir=bases, prefix=f".{key}.creating-"))
                    try:
                        new_vmx(f"vmctl-base-{key}", disk).save(tmp / "base.vmx")
                        (tmp / "source.txt").write_text(f"{disk}\n")
                        os.rename(tmp, bases / key)
                    except BaseException:
                        shutil.rmtree(tmp, ignore_errors=True)
                        raise
        # A user's base VM may serve several vm_dirs: lock its directory (the .vmx is replaced
        # whenever VMware rewrites it, so a lock on that file would not hold).
        with flocked(base.parent, f"lock on base VM {base}", CLONE_TIMEOUT):
            snapshots = parse_count_list(self.vmrun("listSnapshots", base, timeout=QUERY_TIMEOUT), "Total snapshots")
            if BASE_SNAPSHOT not in snapshots:
                log.info("taking snapshot %s of base VM %s", BASE_SNAPSHOT, base)
                self.vmrun("snapshot", base, BASE_SNAPSHOT, timeout=CLONE_TIMEOUT)
        return base
