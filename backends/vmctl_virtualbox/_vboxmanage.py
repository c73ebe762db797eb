"""The VBoxManage transport: every call an argv list, run with a UTF-8 C locale and a timeout.

The locale is ``C.UTF-8`` (``LC_ALL``, ``LANG`` and ``LANGUAGE``), not ``C``: VirtualBox 7.0
prints nothing at all under ``LANG=C`` (hashicorp/vagrant#13145, GNS3/gns3-server#2266) and under
``LC_ALL=C`` prints a non-ASCII machine name as ``?`` (VirtualBox/virtualbox#371). Output is
decoded as strict UTF-8 so that a name read back is the name VirtualBox holds; output that is not
UTF-8 (VirtualBox 4.x-5.x on Windows printed the ANSI code page, hashicorp/vagrant#4978) is decoded
with that code page on Windows and is a :class:`~vmctl.BackendError` (``protocol``) elsewhere.
Commands that always print something (``--version``, ``showvminfo``, ``snapshot list``,
``getextradata``, ``metrics query``) raise a ``protocol`` error when they print nothing.

Errors are read from stderr whatever the exit status (VBoxManage can exit 0 after printing
``VBoxManage: error: ...``), ``startvm`` counts as successful when it printed ``has been
successfully started`` even if it then exits non-zero, and the transient
VBOX_E_INVALID_OBJECT_STATE ("already locked") error is retried a bounded number of times with
exponential backoff, as BOINC's vboxwrapper does.
"""

from __future__ import annotations

import functools
import locale
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmctl.backend.tools import run_tool
from vmctl.errors import BackendError, BackendUnavailable, ErrorCode
from vmctl.screenshot import private_dir, read_bounded
from vmctl.types import Network

from ._errors import VBoxErrorInfo, is_transient, map_error, parse_error
from ._parse import (
    extpack_has_vrde,
    parse_extradata_enumerate,
    parse_extradata_value,
    parse_log_pid,
    parse_machinereadable,
    parse_metrics,
    parse_snapshot_list,
    parse_snapshot_taken,
    parse_version,
    parse_vm_list,
    version_newer,
    vrde_port,
)
from ._transport import SnapshotInfo, Transport, VMInfo

__all__ = ["VBoxManageTransport", "find_vboxmanage"]

log = logging.getLogger("vmctl.virtualbox")

CONTROLLER = "SATA"
STARTED = "has been successfully started"
#: VRDE's ports on 127.0.0.1: the server binds the first free one at each start (RDP's 3389 up)
VRDE_PORTS = "3389-3488"
_IMPORTED_DISK = re.compile(r"^ *\d+: Hard disk image: source image=.*?, target path=(.+), controller=[^,\n]*$", re.M)


@functools.lru_cache(maxsize=1)
def utf8_locale() -> str:
    """The UTF-8 C locale of this host: ``C.UTF-8`` unless ``locale -a`` offers only another."""
    try:
        proc = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10, check=False)
        available = {line.strip() for line in proc.stdout.splitlines()}
    except (OSError, subprocess.SubprocessError):
        return "C.UTF-8"
    if available & {"C.UTF-8", "C.utf8"} or not available & {"en_US.UTF-8", "en_US.utf8"}:
        return "C.UTF-8"
    return "en_US.UTF-8" if "en_US.UTF-8" in available else "en_US.utf8"


def locale_env() -> dict[str, str]:
    """What VBoxManage's environment gets on top of :func:`vmctl.backend.tools.c_locale_env`."""
    name = utf8_locale()
    return {"LANG": name, "LC_ALL": name, "LANGUAGE": name}


def decode_output(data: bytes, what: str) -> str:
    """VBoxManage's stdout as text; see the module's docstring."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if sys.platform == "win32":
            return data.decode(locale.getpreferredencoding(False), errors="replace")
        raise BackendError(
            f"{what} printed output that is not UTF-8 ({exc}); VBoxManage was run with LC_ALL={utf8_locale()}",
            command=what,
            stdout=data.decode("utf-8", errors="replace"),
            code=ErrorCode.PROTOCOL,
            native="VBOXMANAGE_NOT_UTF8",
        ) from exc


def find_vboxmanage() -> str | None:
    """VBoxManage on PATH, or where VirtualBox installs it on Windows and macOS."""
    for name in ("VBoxManage", "vboxmanage", "VBoxManage.exe"):
        found = shutil.which(name)
        if found:
            return found
    candidates = []
    for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "VBoxManage.exe")
    if sys.platform == "darwin":
        candidates.append(Path("/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"))
    for c in candidates:
        if c.is_file():
            return str(c)
    return None


class VBoxManageTransport(Transport):
    name = "vboxmanage"

    def __init__(
        self,
        executable: str,
        *,
        timeout: float = 120,
        retries: int = 5,
        retry_delay: float = 0.5,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.executable = executable
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.env = dict(env or {})
        #: ``modifyvm --nat-localhostreachableN`` exists (VirtualBox 7); :meth:`version` sets it
        self.localhost_switch = True
        #: ``Security/Method=RDP`` is set for VRDE (after VirtualBox 7.0); :meth:`version` sets it
        self.rdp_security_switch = False
        self._vrde: bool | None = None

    # -- running VBoxManage ------------------------------------------------------------------
    def _argv(self, args: Sequence[str]) -> list[str]:
        return [self.executable, "-q", *[str(a) for a in args]]

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float | None = None,
        machine: str | None = None,
        verb: str = "",
        ok_if: str | None = None,
        expected: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run VBoxManage; raise the mapped vmctl error on failure, retrying transient ones.

        ``ok_if``: text on stdout meaning success whatever the status and stderr say (a
        warning is logged unless ``expected``).
        """
        argv = self._argv(args)
        deadline = time.monotonic() + (timeout or self.timeout)
        delay = self.retry_delay
        attempt = 0
        while True:
            left = max(1.0, deadline - time.monotonic())
            raw = run_tool(argv, timeout=left, check=False, env={**locale_env(), **self.env}, text=False)
            proc = subprocess.CompletedProcess(
                raw.args,
                raw.returncode,
                decode_output(raw.stdout, " ".join(argv[1:4])),
                raw.stderr.decode("utf-8", errors="replace"),
            )
            if ok_if is not None and ok_if in proc.stdout:
                if not expected and (proc.returncode != 0 or "error:" in proc.stderr):
                    log.warning(
                        "%s exited %d after reporting success; treating it as success (stderr: %s)",
                        " ".join(argv[1:4]),
                        proc.returncode,
                        proc.stderr.strip()[-300:],
                    )
                return proc
            info = parse_error(proc.stderr, proc.stdout)
            if info is None and proc.returncode == 0:
                return proc
            if info is None:
                detail = (proc.stderr or proc.stdout).strip().splitlines()
                info = VBoxErrorInfo(text=detail[-1] if detail else f"exit status {proc.returncode}")
            elif proc.returncode == 0:
                log.warning("%s exited 0 but printed an error: %s", " ".join(argv[1:4]), info.text)
            if is_transient(info) and attempt < self.retries and time.monotonic() + delay < deadline:
                attempt += 1
                log.info(
                    "%s: transient VirtualBox error (%s), retry %d/%d in %.2f s",
                    " ".join(argv[1:4]),
                    info.code or info.text,
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            raise map_error(
                info,
                command=argv,
                status=proc.returncode,
                stdout=proc.stdout,
                stderr=proc.stderr,
                machine=machine,
                verb=verb,
            )

    def output(self, args: Sequence[str], **kwargs: Any) -> str:
        """:meth:`run` for a command that always prints something: its stdout, never empty."""
        proc = self.run(args, **kwargs)
        if proc.stdout.strip():
            return proc.stdout
        raise self._no_output(args, proc)

    def _no_output(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> BackendError:
        what = " ".join(str(a) for a in args[:3])
        return BackendError(
            f"VBoxManage {what} printed nothing (exit {proc.returncode}). VirtualBox 7.0 does this under a "
            f"non-UTF-8 locale such as LANG=C; vmctl runs it with LC_ALL={utf8_locale()}: check that this "
            "locale exists (locale -a) and that VBoxSVC and VBoxXPCOMIPCD, which keep the locale they were "
            "started with, were not started under another one (stop them, or wait until they exit)",
            command=self._argv(args),
            status=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            code=ErrorCode.PROTOCOL,
            native="VBOXMANAGE_NO_OUTPUT",
        )

    # -- Transport ---------------------------------------------------------------------------
    def version(self) -> str:
        """VirtualBox's version; :class:`~vmctl.BackendUnavailable` for a broken install.

        ``--version`` prints a warning before the version when the vboxdrv kernel module is not
        loaded; such an install can list machines but not start them, so it is refused here, as
        Vagrant and Packer do ("VirtualBox is not properly setup").
        """
        proc = self.run(["--version"], timeout=min(self.timeout, 60))
        version, warning = parse_version(proc.stdout)
        if warning:
            raise BackendUnavailable(
                "virtualbox",
                f"VirtualBox is not properly set up: {self.executable} --version says: {' '.join(warning.split())}",
                "the VirtualBox kernel modules: do what the warning says (sudo /sbin/vboxconfig, or "
                "sudo modprobe vboxdrv), then check that VBoxManage --version prints only the version",
            )
        if version is None:
            raise BackendUnavailable(
                "virtualbox",
                f"{self.executable} --version printed no version ({proc.stdout.strip()[:200]!r})",
                "a working VirtualBox from https://www.virtualbox.org",
            )
        major = version.split(".", 1)[0]
        self.localhost_switch = not major.isdigit() or int(major) >= 7
        self.rdp_security_switch = version_newer(version, (7, 0, 99))
        return version

    def list_vms(self) -> dict[str, str]:
        proc = self.run(["list", "vms"])
        if not proc.stdout.strip():
            # No machines, or VirtualBox printing nothing at all (the locale fault): a command
            # that always prints something tells the two apart.
            self.output(["list", "systemproperties"])
        return parse_vm_list(proc.stdout)

    def info(self, vm: str) -> VMInfo:
        raw = parse_machinereadable(self.output(["showvminfo", vm, "--machinereadable"], machine=vm))
        disks = {k: v for k, v in raw.items() if k.startswith(CONTROLLER + "-") and k.count("-") == 2 and v != "none"}
        cable = raw.get("cableconnected1")
        try:
            cap = int(raw.get("cpuexecutioncap", "100"))
        except ValueError:
            cap = 100
        return VMInfo(
            name=raw.get("name", vm),
            uuid=raw.get("UUID", "").lower(),
            state=raw.get("VMState", "unknown"),
            cfg_file=raw.get("CfgFile", ""),
            log_folder=raw.get("LogFldr", ""),
            snapshot_folder=raw.get("SnapFldr", ""),
            state_file=raw.get("VMStateFile"),
            state_changed=raw.get("VMStateChangeTime", ""),
            cpu_cap=cap,
            memory_mib=int(raw.get("memory", "0") or 0),
            cpus=int(raw.get("cpus", "0") or 0),
            cable_connected=None if cable is None or raw.get("nic1") in (None, "none") else cable == "on",
            disks=disks,
            raw=raw,
        )

    def create_vm(self, name: str, base_folder: Path, ostype: str) -> str:
        proc = self.run(
            ["createvm", "--name", name, "--basefolder", str(base_folder), "--ostype", ostype, "--register"],
            machine=name,
            verb="create",
        )
        for line in proc.stdout.splitlines():
            if line.startswith("UUID:"):
                return line.split(":", 1)[1].strip().lower()
        return self.info(name).uuid

    def configure(
        self,
        vm: str,
        *,
        memory_mib: int,
        cpus: int,
        network: Network | None,
        serial_log: Path | None,
    ) -> None:
        args = [
            "modifyvm",
            vm,
            "--memory",
            str(memory_mib),
            "--cpus",
            str(cpus),
            "--ioapic",
            "on",
            "--acpi",
            "on",
            "--boot1",
            "disk",
            "--boot2",
            "none",
            "--boot3",
            "none",
            "--boot4",
            "none",
        ]
        if network is None:
            args += ["--nic1", "none"]
        else:
            args += ["--nic1", "nat", "--cableconnected1", "on"]
            if self.localhost_switch:
                # VirtualBox 7 (off by default, set anyway): the NAT gateway never reaches host
                # loopback services. VirtualBox 6.1 has no such switch (docs/boinc.md).
                args += ["--nat-localhostreachable1", "off"]
            for pf in network.port_forwards:
                rule = f"{pf.protocol}{pf.host_port},{pf.protocol},{pf.host_address},{pf.host_port},,{pf.guest_port}"
                args += ["--natpf1", rule]
        if serial_log is not None:
            args += ["--uart1", "0x3F8", "4", "--uartmode1", "file", str(serial_log)]
        self.run(args, machine=vm, verb="create")

    def remote_desktop_available(self) -> bool:
        # vboxwrapper's is_extpack_installed: VRDE's server (VBoxVRDP) comes with the extension
        # pack; without one VirtualBox starts the VM with no VRDE server. Asked once.
        if self._vrde is None:
            try:
                self._vrde = extpack_has_vrde(self.output(["list", "extpacks"]))
            except BackendError as exc:
                log.warning("VBoxManage list extpacks failed (%s): no remote desktop for now", exc)
                return False
        return self._vrde

    def enable_remote_desktop(self, vm: str) -> None:
        # vboxwrapper's argv (vbox_vboxmanage.cpp), bound to loopback and with a port range in
        # place of one port chosen beforehand: the VRDE server takes the first free one at each
        # start, so two VMs never collide. Authentication "null": no credentials anywhere.
        args = ["modifyvm", vm, "--vrde", "on", "--vrdeextpack", "default", "--vrdeauthlibrary", "default"]
        args += ["--vrdeauthtype", "null", "--vrdeport", VRDE_PORTS, "--vrdeaddress", "127.0.0.1"]
        if self.rdp_security_switch:
            # after 7.0 VRDE negotiates TLS by default (vboxwrapper sets plain RDP likewise)
            args += ["--vrdeproperty", "Security/Method=RDP"]
        self.run(args, machine=vm, verb="create")

    def remote_desktop_port(self, vm: str) -> int | None:
        return vrde_port(self.info(vm).raw)

    def attach_disk(self, vm: str, path: Path, multiattach: bool) -> None:
        self.run(
            ["storagectl", vm, "--name", CONTROLLER, "--add", "sata", "--controller", "IntelAhci", "--portcount", "1"],
            machine=vm,
            verb="create",
        )
        args = ["storageattach", vm, "--storagectl", CONTROLLER, "--port", "0", "--device", "0", "--type", "hdd"]
        args += ["--medium", str(path)]
        if multiattach:
            args += ["--mtype", "multiattach"]
        self.run(args, machine=vm, verb="create")

    def detach_disk(self, vm: str) -> None:
        args = ["storageattach", vm, "--storagectl", CONTROLLER, "--port", "0", "--device", "0", "--medium", "none"]
        self.run(args, machine=vm, verb="destroy")

    def add_shared_folder(self, vm: str, tag: str, path: Path, *, readonly: bool = False) -> None:
        args = ["sharedfolder", "add", vm, "--name", tag, "--hostpath", str(path)]
        if readonly:
            args.append("--readonly")
        self.run(args, machine=vm, verb="create")

    def get_extradata(self, vm: str, key: str) -> str | None:
        return parse_extradata_value(self.output(["getextradata", vm, key], machine=vm))

    def set_extradata(self, vm: str, key: str, value: str | None) -> None:
        args = ["setextradata", vm, key]
        if value is not None:
            args.append(value)
        self.run(args, machine=vm)

    def extradata(self, vm: str) -> dict[str, str]:
        proc = self.run(["getextradata", vm, "enumerate"], machine=vm)
        # A machine without extradata prints nothing, so an empty answer is not checked here.
        return parse_extradata_enumerate(proc.stdout)

    def start(self, vm: str, timeout: float) -> None:
        self.run(["startvm", vm, "--type", "headless"], timeout=timeout, machine=vm, verb="start", ok_if=STARTED)

    def control(self, vm: str, action: str, *args: str, timeout: float = 60) -> None:
        verb = {"acpipowerbutton": "stop", "savestate": "suspend", "reset": "restart"}.get(action, action)
        self.run(["controlvm", vm, action, *args], timeout=timeout, machine=vm, verb=verb)

    screenshots = True

    def screenshot_png(self, vm: str, timeout: float) -> bytes:
        # ``controlvm VM screenshotpng FILE``: VBoxManage creates FILE itself (following links,
        # truncating), so it writes into a directory of ours that nobody else can enter
        with private_dir() as directory:
            target = directory / "screen.png"
            self.run(["controlvm", vm, "screenshotpng", str(target)], timeout=timeout, machine=vm, verb="screenshot")
            return read_bounded(target)

    def discard_state(self, vm: str) -> None:
        self.run(["discardstate", vm], machine=vm, verb="poweroff")

    def set_cpu_cap_offline(self, vm: str, percent: int) -> None:
        self.run(["modifyvm", vm, "--cpuexecutioncap", str(percent)], machine=vm, verb="set_cpu_limit")

    def snapshot_take(self, vm: str, name: str, description: str, timeout: float) -> str:
        args = ["snapshot", vm, "take", name]
        if description:
            args += ["--description", description]
        proc = self.run(args, timeout=timeout, machine=vm, verb="snapshot")
        found = parse_snapshot_taken(proc.stdout)
        if found:
            return found
        for snap in self.snapshot_list(vm):
            if snap.name == name:
                return snap.uuid
        raise BackendError(f"snapshot {name!r} of {vm!r} was not found after it was taken", command=args)

    def snapshot_list(self, vm: str) -> list[SnapshotInfo]:
        # An empty list is reported on stdout with exit status 1: not an error.
        proc = self.run(
            ["snapshot", vm, "list", "--machinereadable"],
            machine=vm,
            verb="snapshots",
            ok_if="does not have any snapshots",
            expected=True,
        )
        if not proc.stdout.strip():
            raise self._no_output(["snapshot", vm, "list"], proc)
        return [
            SnapshotInfo(
                name=n.name,
                uuid=n.uuid,
                description=n.description,
                parent_uuid=n.parent_uuid,
                order=n.order,
                current=n.current,
            )
            for n in parse_snapshot_list(proc.stdout)
        ]

    def snapshot_restore(self, vm: str, snapshot_uuid: str, timeout: float) -> None:
        self.run(["snapshot", vm, "restore", snapshot_uuid], timeout=timeout, machine=vm, verb="revert")

    def snapshot_delete(self, vm: str, snapshot_uuid: str, timeout: float) -> None:
        self.run(["snapshot", vm, "delete", snapshot_uuid], timeout=timeout, machine=vm, verb="delete_snapshot")

    def import_appliance(self, descriptor: Path, name: str, base_folder: Path, timeout: float) -> list[Path]:
        """``VBoxManage import FILE --vsys 0 --vmname NAME --basefolder DIR``: VBoxManageAppliance.cpp
        first prints what it read, one line per disk ``Hard disk image: source image=..., target
        path=..., controller=...`` among them, then imports (converting each disk into the VM's
        folder); the target paths are the VM's disks."""
        proc = self.run(
            ["import", str(descriptor), "--vsys", "0", "--vmname", name, "--basefolder", str(base_folder)],
            timeout=timeout,
            machine=name,
            verb="create",
        )
        return [Path(m.group(1)) for m in _IMPORTED_DISK.finditer(proc.stdout)]

    def unregister_delete(self, vm: str, timeout: float) -> None:
        self.run(["unregistervm", vm, "--delete"], timeout=timeout, machine=vm, verb="destroy")

    def unregister(self, vm: str, timeout: float) -> None:
        self.run(["unregistervm", vm], timeout=timeout, machine=vm, verb="destroy")

    def vm_pid(self, vm: str, info: VMInfo) -> int | None:
        if not info.log_folder:
            return None
        try:
            with open(Path(info.log_folder) / "VBox.log", encoding="utf-8", errors="replace") as f:
                head = f.read(16384)
        except OSError:
            return None
        return parse_log_pid(head)

    def metrics(self, vm: str) -> dict[str, tuple[float, str]]:
        self.run(["metrics", "setup", "--period", "1", "--samples", "1", vm, "CPU/Load,RAM/Usage"], machine=vm)
        table = parse_metrics(self.output(["metrics", "query", vm, "CPU/Load/User,CPU/Load/Kernel,RAM/Usage/Used"]))
        for obj, values in table.items():
            if obj == vm or not table.get(vm):
                return values
        return {}

    def __repr__(self) -> str:
        return f"<VBoxManageTransport {self.executable!r}>"
