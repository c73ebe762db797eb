"""The QEMU hypervisor: machine records in a state directory, one directory per machine."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from vmctl.backend.store import MachineStore, default_state_dir
from vmctl.backend.tools import run_tool
from vmctl.backend.usage import children_index
from vmctl.errors import BackendError, BackendUnavailable, InvalidSpec, VmctlError, os_error_code
from vmctl.interface import Hypervisor, Machine
from vmctl.types import Capabilities, MachineSpec, Usage

from ._command import resolve_accel
from ._screenshot import DISPLAY_KEY

log = logging.getLogger("vmctl.qemu")

OVERLAY = "disk.qcow2"
ACCELS = ("auto", "kvm", "tcg", "hvf", "whpx")
"""hvf (macOS) and whpx (Windows) are passed to QEMU as they are; only kvm and tcg are tested."""
DEFAULT_LOG_MAX_BYTES = 16 << 20
"""The serial console log and ``qemu.log`` each stay under this while QEMU runs."""


class QemuHypervisor(Hypervisor):
    """Machines run by QEMU processes, recorded under ``state_dir``.

    Options: ``state_dir`` (default ``~/.local/state/vmctl/qemu``, or ``$VMCTL_STATE_DIR/qemu``),
    ``accel`` (``auto``, ``kvm``, ``tcg``, or ``hvf``/``whpx`` for a QEMU on macOS/Windows),
    ``qemu_binary``, ``qemu_img``, ``machine_type``,
    ``cpu_model`` (default: ``max`` under TCG, QEMU's default under KVM), ``passt`` (the program
    that gives guests their network without a way to the host's loopback; where it is not
    installed, or ``passt=""``, QEMU's own user network runs restricted: port forwards work
    but the guest reaches nothing), ``log_max_bytes`` (the serial console log and ``qemu.log``
    each keep only their newest part past this size; default 16 MiB, 0: no cap).
    Any process opening the same ``state_dir`` sees and controls the same machines.
    """

    name = "qemu"

    def __init__(
        self,
        state_dir: str | Path | None = None,
        accel: str = "auto",
        qemu_binary: str = "qemu-system-x86_64",
        qemu_img: str = "qemu-img",
        machine_type: str = "q35",
        cpu_model: str | None = None,
        passt: str = "passt",
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        if accel not in ACCELS:
            raise InvalidSpec("accel", f"{accel!r} is not one of {', '.join(ACCELS)}")
        for tool in (qemu_binary, qemu_img):
            if shutil.which(tool) is None:
                raise BackendUnavailable("qemu", f"{tool!r} not found", "apt-get install qemu-system-x86 qemu-utils")
        self.accel = resolve_accel(accel)
        self.qemu_binary = qemu_binary
        self.qemu_img = qemu_img
        self.machine_type = machine_type
        self.cpu_model = cpu_model
        self.passt = passt
        if isinstance(log_max_bytes, bool) or not isinstance(log_max_bytes, int) or log_max_bytes < 0:
            raise InvalidSpec("log_max_bytes", f"{log_max_bytes!r} is not a byte count (0: no cap)")
        self.log_max_bytes = log_max_bytes
        self.store = MachineStore(Path(state_dir) if state_dir is not None else default_state_dir("qemu"), "qemu")
        self.store.sweep()
        self._sweep_deleted()

    def usage_all(self) -> dict[str, Usage]:
        """Usage of every machine vmctl created here, in one pass: each machine's record and
        the keeper's ``run.json`` are read once, its process tree measured without a scan of the
        process table per machine, and a paused machine's disk byte counts come from what was
        kept when it paused (no QMP round trip; see :mod:`._usage`). Reads change nothing (no
        settling of leftovers: the next verb does that)."""
        from ._machine import QemuMachine
        from ._usage import machine_usage

        children = children_index()
        result: dict[str, Usage] = {}
        for name in self.store.names():
            try:
                rec = self.store.read(name)
            except VmctlError:  # destroyed meanwhile, or a corrupt record: opening it says which
                continue
            if "adopted" in rec:
                continue  # as machines(): vmctl's own only
            result[name] = machine_usage(QemuMachine(self, name), rec, children)
        return result

    def _sweep_deleted(self) -> None:
        """Finish deletions that a killed process left half done: ``.NAME.deleting-*/m`` holds a
        destroyed machine's overlay, snapshots and saved state. Any process may finish them (the
        deleting one may still be at it: both delete, neither minds); an empty one may be a
        deletion about to move its machine in, so it is left to the store's age-based sweep."""
        for grave in self.store.root.glob(".*.deleting-*"):
            if (grave / "m").exists():
                log.info("removing %s, left by a destroy that did not finish", grave)
                shutil.rmtree(grave, ignore_errors=True)

    @property
    def state_dir(self) -> Path:
        return self.store.root

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            pause=True,
            suspend=True,
            snapshots=True,
            live_snapshots=True,
            graceful_restart=True,
            network_toggle=True,
            cpu_limit=True,
            events=True,
            usage_fields=frozenset({"cpu_seconds", "memory_bytes", "disk_read_bytes", "disk_write_bytes"}),
            disk_usage=True,
            cdrom=True,
            extra_disks=True,
            floppy=True,
            screenshot=True,
            remote_desktop=True,
        )

    def image_format(self, path: Path) -> str:
        out = run_tool([self.qemu_img, "info", "--force-share", "--output=json", str(path)], timeout=30)
        fmt = json.loads(out.stdout).get("format")
        if not isinstance(fmt, str):
            raise InvalidSpec("disk", f"qemu-img cannot tell the format of {path}")
        return fmt

    def _do_create(self, spec: MachineSpec) -> Machine:
        record: dict[str, Any] = {
            "spec": spec.to_dict(),
            "created": time.time(),
            "status": "stopped",
            "run_id": None,
            "notes": {},
            DISPLAY_KEY: "vga",
        }
        try:
            return self._create(spec, record)
        except VmctlError:
            raise
        except OSError as exc:  # a full or read-only state directory
            path = str(exc.filename) if exc.filename is not None else None
            raise BackendError(
                f"cannot create machine {spec.name!r}: {exc}", command=path, code=os_error_code(exc)
            ) from exc

    def _create(self, spec: MachineSpec, record: dict[str, Any]) -> Machine:
        from ._machine import QemuMachine

        with self.store.creating(spec.name) as directory:
            if spec.disk is not None:
                base_format = self.image_format(spec.disk)
                if spec.overlay:
                    run_tool(
                        [self.qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(spec.disk),
                         str(directory / OVERLAY)],
                        timeout=60,
                    )  # fmt: skip
                    record["disk"], record["disk_format"] = OVERLAY, "qcow2"
                else:
                    record["disk"], record["disk_format"] = str(spec.disk), base_format
            if spec.extra_disks:
                # probed once, as the base is: the argv names each format (QEMU never guesses)
                record["extra_disk_formats"] = [self.image_format(path) for path in spec.extra_disks]
            (directory / "machine.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        return QemuMachine(self, spec.name)

    def adopt(self, name: str, qmp: str | Path) -> Machine:
        """Adopt a QEMU that vmctl did not start, through its QMP socket ``qmp`` (a UNIX socket of
        a QEMU on this host that no other client holds open), as machine ``name``.

        Afterwards ``hv.machine(name)`` opens it from any process using this ``state_dir`` and
        every verb but ``suspend`` works on it; ``start`` of a powered-off one runs its recorded
        command line again. See :mod:`vmctl_qemu._adopted`. Raises :class:`MachineExists` if
        the name is taken, :class:`InvalidSpec` if nothing answers on ``qmp``.
        """
        from ._adopted import adopt

        return adopt(self, name, qmp)

    def _do_import_appliance(self, path: Path, name: str | None, spec: dict[str, Any], timeout: float) -> Machine:
        from ._appliance import import_appliance

        return import_appliance(self, path, name, spec, timeout)

    def _machine_names(self) -> list[str]:
        return [name for name in self.store.names() if not self._is_adopted(name)]

    def _all_machine_names(self) -> list[str]:
        return self.store.names()

    def _is_adopted(self, name: str) -> bool:
        try:
            return "adopted" in self.store.read(name)
        except VmctlError:  # gone meanwhile, or a corrupt record: opening it says which
            return False

    def _open_machine(self, name: str) -> Machine:
        from ._adopted import AdoptedQemuMachine
        from ._machine import QemuMachine

        rec = self.store.read(name)
        if "adopted" in rec:
            return AdoptedQemuMachine(self, name)
        machine = QemuMachine(self, name)
        machine._recover_if_idle(rec)  # what a killed process left (a verb settles it too)
        return machine
