#!/usr/bin/env python3
"""vmrun_sim: a SIMULATOR of VMware's ``vmrun`` command-line tool. It is not VMware.

VMware Workstation, Player and Fusion cannot be installed on the machines that test vmctl, so
the ``vmware`` backend is tested against this stand-in. It is a stateful re-implementation of the
``vmrun`` verbs the backend uses, written from VMware's documentation and from output of the real
tool quoted in public code, so that the backend's parsing, error mapping and file handling meet
what the real tool does. It simulates only; it never touches a real hypervisor.

State lives in the directory named by ``$VMRUNSIM_HOME`` (required): ``vms/<key>/state.json`` per
virtual machine (power state, the simulated guest, the pid of its host process) and
``profiles/<displayName>.json`` (test knobs for a guest's behaviour). Files VMware keeps next to
the ``.vmx`` are kept there too, as VMware does: ``<vm>.vmss`` and ``checkpoint.vmState`` for
suspended state, ``<vm>.vmsd`` plus ``<vm>-SnapshotN.vmsn`` for snapshots, ``<vm>.vmx.lck`` while
powered on, ``vmware.log``, and ``cleanShutdown``/``softPowerOff`` in the ``.vmx``.

A powered-on VM has a real host process standing for ``vmware-vmx``: its argv[0] is
``.../vmware-vmx`` and its last argument the ``.vmx`` path, as the real process's command line
ends with the ``.vmx`` path. It burns a little CPU while the guest runs and sleeps while paused, so
psutil-based usage, pid and leftover checks see what they would see with VMware. Killing it is a
VMX crash: the VM leaves ``vmrun list`` and its ``.vmx`` keeps ``cleanShutdown = "FALSE"``.

The simulated guest: a counter in "guest RAM" advancing every ``TICK`` seconds of running time
(frozen while paused, saved in suspended state and in snapshots taken while powered on), a boot
counter, a count of soft power requests (``stop soft``/``reset soft``, which VMware delivers
through VMware Tools; the guest honours them after ``SHUTDOWN_DELAY`` unless its profile says
``ignore_power_button``), and the link state of its NIC (``connectNamedDevice`` /
``disconnectNamedDevice ethernet0``). If the VM has a serial port to a file, the guest writes
``VMCTL-GUEST READY|POWERBUTTON|LINK up|down`` lines there.

Usage (the real tool's, VIX 1.17)::

    vmrun [-T ws|player|fusion] [-vp PW] [-gu USER] [-gp PW] COMMAND [PARAMETERS]

Simulated verbs: ``start <vmx> [gui|nogui]``; ``stop|reset|suspend <vmx> [hard|soft]``;
``pause|unpause <vmx>``; ``list``; ``listSnapshots <vmx> [showTree]``; ``snapshot <vmx> <name>``;
``revertToSnapshot <vmx> <name>``; ``deleteSnapshot <vmx> <name> [andDeleteChildren]``;
``clone <vmx> <dest.vmx> full|linked [-snapshot=NAME] [-cloneName=NAME]``;
``connectNamedDevice|disconnectNamedDevice <vmx> <device>``; ``checkToolsState <vmx>``;
``getGuestIPAddress <vmx> [-wait]``; ``deleteVM <vmx>``. Any other verb prints an ``Error:`` line
saying it is not simulated.

Output and errors, as the real tool prints them (stdout, ``Error: <VIX error text>``, exit status
255, i.e. -1):

- ``list``: ``Total running VMs: N`` then one ``.vmx`` path a line; ``listSnapshots``:
  ``Total snapshots: N`` then one name a line. Sources: VMware's ``vmrun`` help text (VIX 1.17,
  reproduced in public notes such as https://pastebin.com/3e9YyQn3 and
  https://gist.github.com/jefflab/8247242); hashicorp/packer-plugin-vmware
  ``builder/vmware/common/driver_workstation.go`` (``IsRunning`` matches ``list`` lines against the
  ``.vmx`` path); the project's ../shared/docs/test-peers.md; captured output of real Fusion 7.1.1
  and 10.0.1 (hashicorp/vagrant#5371, #9224) and Workstation 15.5 on Windows (zlgan/blog).
- ``Error: The virtual machine is not powered on: <vmx>`` (stop, suspend, pause, reset, devices on a
  VM that is off or suspended; VIX_E_VM_NOT_RUNNING. The VIX reference for ``VMPowerOff``: "If you
  call this function while the virtual machine is suspended or powered off, the operation returns
  a VIX_E_VM_NOT_RUNNING error. If suspended, the virtual machine remains suspended"; captured
  from ``stop ... hard`` on Windows in hashicorp/packer#1300).
- ``Error: Cannot open VM: <vmx>, The virtual machine cannot be found`` for a missing ``.vmx``, and
  ``..., unknown file suffix`` for a path not ending in ``.vmx`` (output quoted verbatim in public
  notes and in hashicorp/vagrant-vmware-desktop's utility, which matches ``Error: Cannot open VM:``).
- ``Error: The VMware Tools are not running in the virtual machine: <vmx>`` for soft power
  operations without Tools (hashicorp/vagrant-vmware-desktop; soft operations need Tools per the
  VIX reference for ``VIX_VMPOWEROP_FROM_GUEST``).
- ``Error: One of the parameters was invalid`` (VIX_E_INVALID_ARG; gist above),
  ``Error: The operation is not supported for the specified parameters`` (VIX_E_NOT_SUPPORTED),
  ``Error: A file by that name does not exist`` (VIX_E_SNAPSHOT_NOTFOUND),
  ``Error: The name does not uniquely identify one snapshot`` (VIX_E_SNAPSHOT_NONUNIQUE_NAME),
  ``Error: The virtual machine should not be powered on. It appears to be running already.``
  (VIX_E_VM_IS_RUNNING), ``Error: The file already exists`` (VIX_E_FILE_ALREADY_EXISTS): the VIX
  error descriptions of VMware's VIX reference (codes in vmware/open-vm-tools
  ``lib/include/vix.h``; texts as in steveloughran/smartfrog ``VMWareVixLibrary.java``).
- ``checkToolsState``: ``running`` once the guest's Tools are up, ``installed`` while a powered-on
  guest's Tools are not (vmware/open-vm-tools#718), ``unknown`` for a powered-off VM with exit
  status -2, i.e. 254 on POSIX (GNS3/gns3-server#1901 shows ``unknown`` and a failing status on
  Fusion 12.1.1).
- ``getGuestIPAddress [-wait]``: the address and exit 0; ``Error: The VMware Tools are not running
  in the virtual machine: <vmx>`` (hashicorp/vagrant#11528, #10575: Workstation on Linux and
  Fusion, exit 255), or with ``-wait`` it waits for Tools; a powered-off VM: ``Error: The virtual
  machine is not powered on`` without the path (apcera/libretto#20).
- Lines of real captures are kept under tests/realworld/vmware/ and tests/test_vmware_realworld.py
  checks this simulator's lines against their forms.
- Player refuses snapshots with ``Error: The operation is not supported``
  (Orange-Cyberdefense/GOAD#108, ``-T player snapshot`` on Linux), and pause/unpause and clone
  likewise: the VIX reference for ``RevertToSnapshot``
  says "This function is not supported when using the VIX_SERVICEPROVIDER_VMWARE_PLAYER host
  type", and the VIX 1.6 release notes list ``VixVM_Clone``, ``VixVM_Pause`` and
  ``VixVM_Unpause`` as "Workstation only".
- ``revertToSnapshot`` leaves the VM in the power state it had when the snapshot was taken (VIX
  reference, ``VixVM_RevertToSnapshot``); a snapshot of a powered-on VM includes its memory.
- Suspended state is ``<vm>.vmss`` named by ``checkpoint.vmState`` in the ``.vmx``; deleting both
  discards it (hashicorp/vagrant-vmware-desktop ``discard_suspended_state``). A clean power-off
  writes ``cleanShutdown = "TRUE"`` (``softPowerOff`` TRUE after a guest shutdown) and
  ``VMX exit (0).`` in ``vmware.log``.

Simplifications: one snapshot tree per VM without disk delta files, a linked clone needs
``-snapshot=`` and gets a small delta descriptor naming its parent disk; ``suspend soft`` behaves
as ``suspend hard``; ``stop soft``/``reset soft`` on a guest that ignores them block until the VM
is powered off otherwise, or ``VMRUNSIM_SOFT_TIMEOUT`` seconds (default 120), then fail.

The functions ``guest_view``, ``set_profile`` and ``collect_garbage`` are for test harnesses, which
import this file as a module to look inside the simulated guest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TICK = 0.5
"""Seconds of guest running time per counter step (as the VBoxManage simulator's: at 0.25 s a
probe read delayed by a second on a busy host saw the reverted counter already past the
contract test's margin)."""
BOOT_DELAY = 0.3
"""Seconds from power-on until the guest's init (and its VMware Tools) are up."""
SHUTDOWN_DELAY = 0.3
"""Seconds a cooperative guest takes to honour a soft power-off or reboot request."""
EXIT_ERROR = 255
EXIT_TOOLS_UNKNOWN = 254
"""vmrun exits -1 after an ``Error:`` line and -2 after ``unknown`` from ``checkToolsState``
(Windows shows them as such); a POSIX exit status is that number modulo 256."""
PRODUCTS = ("ws", "player", "fusion")
PLAYER_REFUSES = {"pause", "unpause", "listsnapshots", "snapshot", "reverttosnapshot", "deletesnapshot", "clone"}
SCRIPT = str(Path(__file__).resolve())
MASK32 = 0xFFFFFFFF

E_NOT_ON = "The virtual machine is not powered on: {vmx}"
E_NOT_FOUND = "Cannot open VM: {vmx}, The virtual machine cannot be found"
E_SUFFIX = "Cannot open VM: {vmx}, unknown file suffix"
E_TOOLS = "The VMware Tools are not running in the virtual machine: {vmx}"
E_INVALID = "One of the parameters was invalid"
E_UNSUPPORTED = "The operation is not supported for the specified parameters"
E_PLAYER_UNSUPPORTED = "The operation is not supported"
E_NOT_ON_NO_PATH = "The virtual machine is not powered on"
E_SNAP_NOT_FOUND = "A file by that name does not exist"
E_SNAP_NONUNIQUE = "The name does not uniquely identify one snapshot"
E_IS_RUNNING = "The virtual machine should not be powered on. It appears to be running already."
E_EXISTS = "The file already exists"
E_CANCELLED = "The operation was cancelled"

USAGE = """vmrun version 1.17.0 build-simulated (vmrun_sim: a simulator, not VMware)

Usage: vmrun [AUTHENTICATION-FLAGS] COMMAND [PARAMETERS]

AUTHENTICATION-FLAGS
--------------------
These must appear before the command and any command parameters.

   -T <hostType> (ws|fusion|player)
   -vp <password for encrypted virtual machine>
   -gu <userName in guest OS>
   -gp <password in guest OS>
"""


class VmrunError(Exception):
    """Printed as ``Error: <message>`` with exit status 255."""


class Outcome(Exception):
    """Output with an exit status of its own (``checkToolsState`` on a powered-off VM)."""

    def __init__(self, out: str, status: int) -> None:
        super().__init__(out)
        self.out = out
        self.status = status


class UsageError(Exception):
    """Printed as the usage text with exit status 255."""


# -- .vmx / .vmsd files, read as VMware's dictll.c (open-vm-tools lib/dict) reads them ---------------------------------
# A line is `name = value`, `name = "value"` or `name =`, each optionally followed by a `# comment`;
# other lines are kept as they are. Values are `|XX`-escaped bytes in the character set the
# `.encoding` line names. Written lines are `name = "value"` with `"`, `|`, DEL and controls but tab
# escaped (DictLL_MarshalLine). Undecodable bytes pass through unchanged (surrogateescape).
_WS = b" \t"
_HEXDIGITS = b"0123456789abcdefABCDEF"


def _split_setting(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(name, raw value, what follows the value) of a well-formed line, else None."""
    i = len(line) - len(line.lstrip(_WS))
    j = i
    while j < len(line) and line[j] not in b"\0 \t#=":
        j += 1
    name, k = line[i:j], j
    while k < len(line) and line[k] in _WS:
        k += 1
    if not name or k >= len(line) or line[k : k + 1] != b"=":
        return None
    k += 1
    while k < len(line) and line[k] in _WS:
        k += 1
    if line[k : k + 1] == b'"':
        end = line.find(b'"', k + 1)
        if end < 0 or b"\0" in line[k + 1 : end]:
            return None
        value, rest = line[k + 1 : end], end + 1
    else:
        end = k
        while end < len(line) and line[end] not in b"\0 \t#":
            end += 1
        value, rest = line[k:end], end
    tail = line[rest:]
    if tail.strip(_WS)[:1] not in (b"", b"#", b"\0"):
        return None
    return name, value, tail


def vmx_unescape_bytes(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"|" and len(raw) > i + 2 and raw[i + 1] in _HEXDIGITS and raw[i + 2] in _HEXDIGITS:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        elif raw[i : i + 1] == b"|":
            step = 3 if len(raw) > i + 1 and raw[i + 1] in _HEXDIGITS else 2
            out += raw[i : i + step]
            i += step
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def vmx_escape_bytes(raw: bytes) -> bytes:
    return b"".join(b"|%02X" % c if (c < 0x20 and c != 9) or c in (0x22, 0x7C, 0x7F) else bytes([c]) for c in raw)


def _file_lines(path: Path) -> tuple[bytes, list[bytes], str]:
    """(byte-order mark, lines without their "\n", encoding) of a dictionary file."""
    data = path.read_bytes()
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    lines = data[len(bom) :].split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    encoding = "utf-8"
    for line in lines:
        parts = _split_setting(line.removesuffix(b"\r"))
        if parts and parts[0].lower() == b".encoding":
            encoding = vmx_unescape_bytes(parts[1]).decode("ascii", "replace")
    try:
        "".encode(encoding)
    except LookupError:
        encoding = "utf-8"  # simplification: no capture shows what vmrun says here
    return bom, lines, encoding


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(key as written, unescaped value) for each well-formed line."""
    _, lines, encoding = _file_lines(path)
    pairs = []
    for line in lines:
        parts = _split_setting(line.removesuffix(b"\r"))
        if parts:
            name, value, _ = parts
            pairs.append(
                (
                    name.decode(encoding, "surrogateescape"),
                    vmx_unescape_bytes(value).decode(encoding, "surrogateescape"),
                )
            )
    return pairs


def read_dict(path: Path) -> dict[str, str]:
    """Keys lower-cased (VMware's keys are case-insensitive; the last one counts), values unescaped."""
    return {k.lower(): v for k, v in read_pairs(path)}


def write_atomic(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def update_dict_file(path: Path, changes: dict[str, str | None]) -> None:
    """Set or (with None) remove keys in place, keeping every other line byte for byte."""
    bom, lines, encoding = _file_lines(path) if path.exists() else (b"", [], "utf-8")
    lowered = {k.lower(): (k, v) for k, v in changes.items()}
    out: list[bytes] = []
    done: set[str] = set()
    for line in lines:
        cr = b"\r" if line.endswith(b"\r") else b""
        parts = _split_setting(line.removesuffix(b"\r"))
        key = parts[0].decode(encoding, "surrogateescape").lower() if parts else None
        if parts is None or key not in lowered:
            out.append(line)
            continue
        original, value = lowered[key]
        if value is not None and key not in done:
            raw = vmx_escape_bytes(value.encode(encoding, "surrogateescape"))
            out.append(parts[0] + b' = "' + raw + b'"' + parts[2] + cr)
        done.add(key)
    for key, (original, value) in lowered.items():
        if key not in done and value is not None:
            raw = vmx_escape_bytes(value.encode(encoding, "surrogateescape"))
            out.append(original.encode(encoding) + b' = "' + raw + b'"')
    write_atomic(path, bom + b"".join(line + b"\n" for line in out))


def write_dict_file(path: Path, values: dict[str, str]) -> None:
    lines = ['.encoding = "UTF-8"'] + [
        f'{k} = "{vmx_escape_bytes(v.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")}"'
        for k, v in values.items()
        if k.lower() != ".encoding"
    ]
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))


# -- paths and state -------------------------------------------------------------------------
def sim_home() -> Path:
    home = os.environ.get("VMRUNSIM_HOME")
    if not home:
        raise VmrunError("vmrun_sim: VMRUNSIM_HOME is not set (this is a simulator and needs a state directory)")
    path = Path(home)
    (path / "vms").mkdir(parents=True, exist_ok=True)
    return path


def vm_key(vmx: Path) -> str:
    return hashlib.sha256(str(vmx).encode()).hexdigest()[:20]


def vmss_path(vmx: Path) -> Path:
    return vmx.with_suffix(".vmss")


def vmsd_path(vmx: Path) -> Path:
    return vmx.with_suffix(".vmsd")


def lck_path(vmx: Path) -> Path:
    return vmx.with_name(vmx.name + ".lck")


def new_guest() -> dict[str, Any]:
    return {
        "counter_base": 0.0,
        "running_since": None,
        "boots": 0,
        "presses": 0,
        "link_up": True,
        "booted_at": None,
        "halt_at": None,
        "reboot_at": None,
    }


def counter(guest: dict[str, Any], now: float) -> int:
    extra = 0.0
    if guest["running_since"] is not None:
        extra = max(0.0, now - guest["running_since"]) / TICK
    return int(guest["counter_base"] + extra)


def freeze(guest: dict[str, Any], at: float) -> None:
    if guest["running_since"] is not None:
        guest["counter_base"] += max(0.0, at - guest["running_since"]) / TICK
        guest["running_since"] = None


def thaw(guest: dict[str, Any], at: float) -> None:
    if guest["running_since"] is None:
        guest["running_since"] = at


def memory_image(guest: dict[str, Any], at: float) -> dict[str, Any]:
    """What a memory image (suspend file, snapshot) holds: the guest frozen at ``at``."""
    image = dict(guest)
    freeze(image, at)
    image.update(booted_at=None, halt_at=None, reboot_at=None)
    return image


def proc_alive(pid: int | None, vmx: Path) -> bool:
    """``pid`` is a live (non-zombie) process whose command line names ``vmx``."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat[stat.rfind(")") + 2 :].startswith("Z"):
        return False
    return str(vmx).encode() in cmdline


def vmware_log(vmx: Path, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    with contextlib.suppress(OSError), open(vmx.parent / "vmware.log", "a", encoding="utf-8") as log:
        log.write(f"{stamp} In(05) vmx - {text}\n")


def serial_write(vmx: Path, line: str) -> None:
    """The guest prints ``line`` on its serial console, if that goes to a file."""
    try:
        conf = read_dict(vmx)
    except OSError:
        return
    if conf.get("serial0.present", "").upper() != "TRUE" or conf.get("serial0.filetype") != "file":
        return
    target = conf.get("serial0.filename")
    if target:
        path = Path(target) if os.path.isabs(target) else vmx.parent / target
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def profile(home: Path, vmx: Path) -> dict[str, Any]:
    """Test knobs for this VM's guest, found by its displayName."""
    try:
        name = read_dict(vmx).get("displayname", vmx.stem)
        data: dict[str, Any] = json.loads((home / "profiles" / f"{name}.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


class VM:
    """One VM's simulator state, loaded and saved under its lock."""

    def __init__(self, home: Path, vmx: Path) -> None:
        self.home = home
        self.vmx = vmx
        self.dir = home / "vms" / vm_key(vmx)
        self.data: dict[str, Any] = {"vmx": str(vmx), "power": "off", "pid": None, "guest": new_guest()}
        self.to_kill: list[int] = []

    @property
    def guest(self) -> dict[str, Any]:
        g: dict[str, Any] = self.data["guest"]
        return g

    @property
    def power(self) -> str:
        p: str = self.data["power"]
        return p

    def load(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.data = json.loads((self.dir / "state.json").read_text())

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "state.json", json.dumps(self.data, indent=1))

    def suspended(self) -> bool:
        try:
            name = read_dict(self.vmx).get("checkpoint.vmstate", "")
        except OSError:
            return False
        return bool(name) and (self.vmx.parent / name).is_file()

    def settle(self, now: float) -> None:
        """Apply what happened since the last look: a dead VMX, a guest that halted or rebooted."""
        g = self.guest
        if self.power in ("on", "paused") and not proc_alive(self.data["pid"], self.vmx):
            freeze(g, now)
            self.data.update(power="off", pid=None)
            g.update(booted_at=None, halt_at=None, reboot_at=None)
            return
        if self.power == "on" and g["halt_at"] is not None and now >= g["halt_at"]:
            self.power_off(g["halt_at"], soft=True)
        elif self.power == "on" and g["reboot_at"] is not None and now >= g["reboot_at"]:
            self.boot(g["reboot_at"])

    def boot(self, at: float) -> None:
        """The guest boots afresh: RAM cleared, link as configured at power-on."""
        g = self.guest
        try:
            connected = read_dict(self.vmx).get("ethernet0.startconnected", "TRUE").upper() != "FALSE"
        except OSError:
            connected = True
        g.update(counter_base=0.0, running_since=at, boots=g["boots"] + 1, booted_at=at + BOOT_DELAY)
        g.update(halt_at=None, reboot_at=None, link_up=connected)
        serial_write(self.vmx, "VMCTL-GUEST BOOT")
        serial_write(self.vmx, "VMCTL-GUEST READY")

    def power_on(self, now: float, image: dict[str, Any] | None = None) -> None:
        """Start a VMX process; boot the guest, or continue it from a memory image."""
        with contextlib.suppress(OSError):
            shutil.rmtree(lck_path(self.vmx))  # stale lock of a crashed VMX on this host
        lck_path(self.vmx).mkdir(exist_ok=True)
        update_dict_file(self.vmx, {"cleanShutdown": "FALSE", "softPowerOff": "FALSE"})
        pid = spawn_vmx_process(self.vmx)
        vmware_log(self.vmx, f"Log for VMware Workstation (simulated) pid={pid}")
        self.data.update(power="on", pid=pid, powered_on_at=now)
        if image is None:
            self.boot(now)
        else:
            self.data["guest"] = dict(image)
            self.guest.update(booted_at=now, halt_at=None, reboot_at=None)
            thaw(self.guest, now)

    def power_off(self, at: float, soft: bool = False) -> None:
        """Clean power-off: the VMX writes cleanShutdown and exits."""
        freeze(self.guest, at)
        self.guest.update(booted_at=None, halt_at=None, reboot_at=None)
        if self.data["pid"]:
            self.to_kill.append(self.data["pid"])
        self.data.update(power="off", pid=None)
        with contextlib.suppress(OSError):
            update_dict_file(self.vmx, {"cleanShutdown": "TRUE", "softPowerOff": "TRUE" if soft else "FALSE"})
        with contextlib.suppress(OSError):
            shutil.rmtree(lck_path(self.vmx))
        vmware_log(self.vmx, "VMX exit (0).")

    def tools_running(self, now: float) -> bool:
        g = self.guest
        if profile(self.home, self.vmx).get("tools", True) is False:
            return False
        return self.power == "on" and g["booted_at"] is not None and now >= g["booted_at"]


@contextlib.contextmanager
def locked_vm(home: Path, vmx: Path) -> Iterator[VM]:
    """Load, settle and save one VM's state under its lock; kill VMX processes that must go."""
    vm = VM(home, vmx)
    vm.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(vm.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        vm.load()
        vm.settle(time.time())
        yield vm
        vm.save()
    finally:
        os.close(fd)
    for pid in vm.to_kill:
        if pid != os.getpid():
            kill_vmx_process(pid, vmx)


def kill_vmx_process(pid: int, vmx: Path) -> None:
    if not proc_alive(pid, vmx):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while proc_alive(pid, vmx):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)


def wake_vmx_process(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)


def spawn_vmx_process(vmx: Path) -> int:
    """Start the process standing for vmware-vmx; return once it is up."""
    argv0 = os.path.join(os.path.dirname(sys.executable), "vmware-vmx")
    proc = subprocess.Popen(
        [argv0, SCRIPT, "--vmx-process", str(vmx)],
        executable=sys.executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        raise VmrunError(f"Cannot open VM: {vmx}, the virtual machine process failed to start")
    proc.returncode = 0  # it outlives this vmrun process; keep Popen from warning about it
    return proc.pid


def vmx_process_main(vmx: Path) -> None:
    """The stand-in for vmware-vmx: runs (a little CPU) while the guest runs, sleeps otherwise."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    devnull = os.open(os.devnull, os.O_RDWR)
    os.write(1, b"ready\n")
    os.dup2(devnull, 1)
    home = sim_home()
    me = os.getpid()
    while True:
        with locked_vm(home, vmx) as vm:
            if vm.data["pid"] != me:
                return
            running = vm.power == "on"
            wake_at = vm.guest["halt_at"] if running else None
        if running:
            spin_until = time.monotonic() + 0.015
            while time.monotonic() < spin_until:
                pass
            timeout = 0.15
            if wake_at is not None:
                timeout = min(timeout, max(0.0, wake_at - time.time()))
            signal.sigtimedwait({signal.SIGUSR1}, timeout)
        else:
            signal.sigwaitinfo({signal.SIGUSR1})


# -- snapshots (.vmsd) -----------------------------------------------------------------------
def read_snapshots(vmx: Path) -> tuple[list[dict[str, Any]], int | None, int]:
    """(snapshots in creation order, current uid, last uid)."""
    path = vmsd_path(vmx)
    if not path.exists():
        return [], None, 0
    d = read_dict(path)
    snaps: list[dict[str, Any]] = []
    for i in range(int(d.get("snapshot.numsnapshots", "0"))):
        p = f"snapshot{i}."
        snaps.append(
            {
                "uid": int(d[p + "uid"]),
                "name": d.get(p + "displayname", ""),
                "file": d.get(p + "filename", ""),
                "parent": int(d[p + "parent"]) if p + "parent" in d else None,
                "created": (int(d.get(p + "createtimehigh", "0")) << 32)
                | (int(d.get(p + "createtimelow", "0")) & MASK32),
            }
        )
    snaps.sort(key=lambda s: s["uid"])
    current = int(d["snapshot.current"]) if "snapshot.current" in d else None
    return snaps, current, int(d.get("snapshot.lastuid", "0"))


def write_snapshots(vmx: Path, snaps: list[dict[str, Any]], current: int | None, last: int) -> None:
    values: dict[str, str] = {"snapshot.lastUID": str(last)}
    if current is not None:
        values["snapshot.current"] = str(current)
    for i, s in enumerate(snaps):
        p = f"snapshot{i}."
        values[p + "uid"] = str(s["uid"])
        values[p + "filename"] = s["file"]
        values[p + "displayName"] = s["name"]
        if s["parent"] is not None:
            values[p + "parent"] = str(s["parent"])
        values[p + "createTimeHigh"] = str(s["created"] >> 32)
        low = s["created"] & MASK32
        values[p + "createTimeLow"] = str(low - (1 << 32) if low >= 1 << 31 else low)  # signed, as VMware writes it
        values[p + "numDisks"] = "0"
    values["snapshot.numSnapshots"] = str(len(snaps))
    write_dict_file(vmsd_path(vmx), values)


def tree_order(snaps: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first from the roots, children in creation order: (depth, snapshot)."""
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in snaps:
            if s["parent"] == parent:
                out.append((depth, s))
                walk(s["uid"], depth + 1)

    walk(None, 0)
    return out


def find_snapshot(snaps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in snaps if s["name"] == name]
    if not found:
        raise VmrunError(E_SNAP_NOT_FOUND)
    if len(found) > 1:
        raise VmrunError(E_SNAP_NONUNIQUE)
    return found[0]


# -- verbs -----------------------------------------------------------------------------------
def open_vm(arg: str) -> Path:
    """Resolve a ``.vmx`` argument the way vmrun reports it (absolute path)."""
    path = Path(os.path.abspath(arg))
    if path.suffix.lower() != ".vmx":
        raise VmrunError(E_SUFFIX.format(vmx=arg))
    if not path.is_file():
        raise VmrunError(E_NOT_FOUND.format(vmx=arg))
    return path


def need(args: list[str], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        raise UsageError(f"Invalid number of parameters: {len(args)}")


def mode_arg(args: list[str], default: str) -> str:
    mode = args[1].lower() if len(args) > 1 else default
    if mode not in ("hard", "soft"):
        raise VmrunError(E_INVALID)
    return mode


def cmd_start(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    if len(args) > 1 and args[1].lower() not in ("gui", "nogui"):
        raise VmrunError(E_INVALID)
    with locked_vm(home, vmx) as vm:
        now = time.time()
        if vm.power in ("on", "paused"):
            raise VmrunError(E_IS_RUNNING)
        image = None
        if vm.suspended():
            state_file = vmx.parent / read_dict(vmx)["checkpoint.vmstate"]
            image = json.loads(state_file.read_text())["guest"]
            state_file.unlink()
            update_dict_file(vmx, {"checkpoint.vmState": None})
        vm.power_on(now, image)
    return ""


def wait_soft(home: Path, vmx: Path, done: Any, what: str) -> None:
    """Block like the real tool until the guest has done what was asked (or the VM went off)."""
    cap = float(os.environ.get("VMRUNSIM_SOFT_TIMEOUT", "120"))
    deadline = time.monotonic() + cap
    while True:
        with locked_vm(home, vmx) as vm:
            if done(vm):
                return
        if time.monotonic() > deadline:
            raise VmrunError(E_CANCELLED)
        time.sleep(0.02)


def cmd_stop(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    mode = mode_arg(args, "soft")
    with locked_vm(home, vmx) as vm:
        now = time.time()
        if vm.power == "off":
            raise VmrunError(E_NOT_ON.format(vmx=vmx))
        if mode == "hard":
            vm.power_off(now)
            return ""
        if not vm.tools_running(now):
            raise VmrunError(E_TOOLS.format(vmx=vmx))
        vm.guest["presses"] += 1
        serial_write(vmx, "VMCTL-GUEST POWERBUTTON")
        if not profile(home, vmx).get("ignore_power_button"):
            vm.guest["halt_at"] = now + SHUTDOWN_DELAY
            wake_vmx_process(vm.data["pid"])
    wait_soft(home, vmx, lambda v: v.power == "off", "stop")
    return ""


def cmd_reset(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    mode = mode_arg(args, "soft")
    with locked_vm(home, vmx) as vm:
        now = time.time()
        if vm.power == "off":
            raise VmrunError(E_NOT_ON.format(vmx=vmx))
        if mode == "hard":
            vm.data["power"] = "on"
            vm.boot(now)
            return ""
        if not vm.tools_running(now):
            raise VmrunError(E_TOOLS.format(vmx=vmx))
        vm.guest["presses"] += 1
        boots = vm.guest["boots"]
        serial_write(vmx, "VMCTL-GUEST POWERBUTTON")
        if not profile(home, vmx).get("ignore_power_button"):
            vm.guest["reboot_at"] = now + SHUTDOWN_DELAY
    wait_soft(home, vmx, lambda v: v.power == "off" or v.guest["boots"] > boots, "reset")
    return ""


def cmd_suspend(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    mode_arg(args, "soft")
    with locked_vm(home, vmx) as vm:
        now = time.time()
        if vm.power == "off":
            raise VmrunError(E_NOT_ON.format(vmx=vmx))
        image = memory_image(vm.guest, now)
        vm.power_off(now)
        write_atomic(vmss_path(vmx), json.dumps({"guest": image}))
        update_dict_file(vmx, {"checkpoint.vmState": vmss_path(vmx).name})
    return ""


def cmd_pause(home: Path, args: list[str], pause: bool) -> str:
    need(args, 1, 1)
    vmx = open_vm(args[0])
    with locked_vm(home, vmx) as vm:
        now = time.time()
        if vm.power == "off":
            raise VmrunError(E_NOT_ON.format(vmx=vmx))
        if pause and vm.power == "on":
            freeze(vm.guest, now)
            vm.data["power"] = "paused"
        elif not pause and vm.power == "paused":
            thaw(vm.guest, now)
            vm.data["power"] = "on"
        wake_vmx_process(vm.data["pid"])
    return ""


def collect_garbage(home: Path) -> None:
    """Forget VMs whose .vmx is gone and whose VMX process is gone too."""
    for entry in (home / "vms").iterdir():
        try:
            data = json.loads((entry / "state.json").read_text())
        except (OSError, ValueError):
            continue
        vmx = Path(data["vmx"])
        if not vmx.exists() and not proc_alive(data.get("pid"), vmx):
            shutil.rmtree(entry, ignore_errors=True)


def cmd_list(home: Path, args: list[str]) -> str:
    need(args, 0, 0)
    collect_garbage(home)
    running: list[tuple[float, str]] = []
    for entry in (home / "vms").iterdir():
        try:
            vmx = Path(json.loads((entry / "state.json").read_text())["vmx"])
        except (OSError, ValueError, KeyError):
            continue
        with locked_vm(home, vmx) as vm:
            if vm.power in ("on", "paused"):
                running.append((vm.data.get("powered_on_at", 0.0), str(vmx)))
    paths = [path for _, path in sorted(running)]
    return "".join([f"Total running VMs: {len(paths)}\n"] + [p + "\n" for p in paths])


def cmd_list_snapshots(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    tree = len(args) > 1
    if tree and args[1].lower() != "showtree":
        raise VmrunError(E_INVALID)
    with locked_vm(home, vmx):
        snaps, _, _ = read_snapshots(vmx)
    lines = [f"Total snapshots: {len(snaps)}"]
    lines += [("\t" * depth if tree else "") + s["name"] for depth, s in tree_order(snaps)]
    return "\n".join(lines) + "\n"


def cmd_snapshot(home: Path, args: list[str]) -> str:
    need(args, 2, 2)
    vmx = open_vm(args[0])
    name = args[1]
    if not name:
        raise VmrunError(E_INVALID)
    with locked_vm(home, vmx) as vm:
        now = time.time()
        snaps, current, last = read_snapshots(vmx)
        uid = last + 1
        image: dict[str, Any] = {"power": "off", "guest": None}
        if vm.power in ("on", "paused"):
            image = {"power": "on", "guest": memory_image(vm.guest, now)}
        elif vm.suspended():
            saved = json.loads((vmx.parent / read_dict(vmx)["checkpoint.vmstate"]).read_text())
            image = {"power": "suspended", "guest": saved["guest"]}
        file = f"{vmx.stem}-Snapshot{uid}.vmsn"
        write_atomic(vmx.parent / file, json.dumps(image))
        snaps.append({"uid": uid, "name": name, "file": file, "parent": current, "created": int(now * 1e6)})
        write_snapshots(vmx, snaps, uid, uid)
    return ""


def cmd_revert(home: Path, args: list[str]) -> str:
    need(args, 2, 2)
    vmx = open_vm(args[0])
    with locked_vm(home, vmx) as vm:
        now = time.time()
        snaps, _, last = read_snapshots(vmx)
        snap = find_snapshot(snaps, args[1])
        image = json.loads((vmx.parent / snap["file"]).read_text())
        if vm.power in ("on", "paused"):
            vm.power_off(now)
        if vm.suspended():
            (vmx.parent / read_dict(vmx)["checkpoint.vmstate"]).unlink()
            update_dict_file(vmx, {"checkpoint.vmState": None})
        if image["power"] == "on":
            vm.to_kill, killing = [], vm.to_kill
            for pid in killing:
                kill_vmx_process(pid, vmx)
            vm.power_on(now, image["guest"])
        elif image["power"] == "suspended":
            write_atomic(vmss_path(vmx), json.dumps({"guest": image["guest"]}))
            update_dict_file(vmx, {"checkpoint.vmState": vmss_path(vmx).name})
        write_snapshots(vmx, snaps, snap["uid"], last)
    return ""


def cmd_delete_snapshot(home: Path, args: list[str]) -> str:
    need(args, 2, 3)
    vmx = open_vm(args[0])
    children_too = len(args) > 2
    if children_too and args[2].lower() != "anddeletechildren":
        raise VmrunError(E_INVALID)
    with locked_vm(home, vmx):
        snaps, current, last = read_snapshots(vmx)
        snap = find_snapshot(snaps, args[1])
        doomed = {snap["uid"]}
        if children_too:
            for _, s in tree_order([x for x in snaps]):
                if s["parent"] in doomed:
                    doomed.add(s["uid"])
        for s in snaps:
            if s["uid"] in doomed:
                with contextlib.suppress(OSError):
                    (vmx.parent / s["file"]).unlink()
            elif s["parent"] == snap["uid"]:
                s["parent"] = snap["parent"]
        if current in doomed:
            current = snap["parent"]
        write_snapshots(vmx, [s for s in snaps if s["uid"] not in doomed], current, last)
    return ""


def cmd_clone(home: Path, args: list[str]) -> str:
    need(args, 3, 5)
    vmx = open_vm(args[0])
    dest = Path(os.path.abspath(args[1]))
    kind = args[2].lower()
    options: dict[str, str] = {}
    for extra in args[3:]:
        key, sep, value = extra.partition("=")
        if not sep or key not in ("-snapshot", "-cloneName") or not value:
            raise VmrunError(E_INVALID)
        options[key] = value
    if kind not in ("full", "linked") or dest.suffix.lower() != ".vmx":
        raise VmrunError(E_INVALID)
    if kind == "linked" and "-snapshot" not in options:
        raise VmrunError(E_INVALID)
    if dest.exists():
        raise VmrunError(E_EXISTS)
    with locked_vm(home, vmx) as vm:
        if vm.power in ("on", "paused"):
            raise VmrunError(E_IS_RUNNING)
        snaps, _, _ = read_snapshots(vmx)
        if "-snapshot" in options:
            find_snapshot(snaps, options["-snapshot"])
        pairs = read_pairs(vmx)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clone_name = options.get("-cloneName", dest.stem)
    skip = ("checkpoint.", "cleanshutdown", "softpoweroff", "uuid.", "ethernet0.generatedaddress", "displayname")
    values = {k: v for k, v in pairs if not k.lower().startswith(skip)}
    values["displayName"] = clone_name
    disk_keys = [k for k, v in values.items() if k.lower().endswith(".filename") and v.lower().endswith(".vmdk")]
    for n, key in enumerate(disk_keys, 1):
        parent = Path(values[key]) if os.path.isabs(values[key]) else vmx.parent / values[key]
        child = dest.parent / f"{clone_name}-cl{n}.vmdk"
        if kind == "full":
            shutil.copyfile(parent, child)
        else:
            child.write_text(
                '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=fffffffe\nparentCID=ffffffff\n'
                f'createType="monolithicSparse"\nparentFileNameHint="{parent.resolve()}"\n'
                f'# Extent description\nRW 0 SPARSE "{child.name}"\n'
            )
        values[key] = child.name
    write_dict_file(dest, values)
    return ""


def cmd_named_device(home: Path, args: list[str], connect: bool) -> str:
    need(args, 2, 2)
    vmx = open_vm(args[0])
    device = args[1]
    with locked_vm(home, vmx) as vm:
        if vm.power == "off":
            raise VmrunError(E_NOT_ON.format(vmx=vmx))
        conf = read_dict(vmx)
        if conf.get(f"{device.lower()}.present", "").upper() != "TRUE":
            raise VmrunError(E_INVALID)
        if device.lower() == "ethernet0" and vm.guest["link_up"] != connect:
            vm.guest["link_up"] = connect
            serial_write(vmx, f"VMCTL-GUEST LINK {'up' if connect else 'down'}")
    return ""


def cmd_check_tools(home: Path, args: list[str]) -> str:
    need(args, 1, 1)
    vmx = open_vm(args[0])
    with locked_vm(home, vmx) as vm:
        if vm.power == "off":
            raise Outcome("unknown\n", EXIT_TOOLS_UNKNOWN)
        return ("running" if vm.tools_running(time.time()) else "installed") + "\n"


def guest_ip(vmx: Path) -> str:
    """The simulated guest's address on the NAT network (stable for a .vmx path)."""
    return f"192.168.153.{128 + int(vm_key(vmx)[:2], 16) % 120}"


def cmd_guest_ip(home: Path, args: list[str]) -> str:
    need(args, 1, 2)
    vmx = open_vm(args[0])
    wait = len(args) > 1
    if wait and args[1].lower() != "-wait":
        raise VmrunError(E_INVALID)
    deadline = time.monotonic() + float(os.environ.get("VMRUNSIM_SOFT_TIMEOUT", "120"))
    while True:
        with locked_vm(home, vmx) as vm:
            if vm.power == "off":
                raise VmrunError(E_NOT_ON_NO_PATH)
            if vm.tools_running(time.time()):
                return guest_ip(vmx) + "\n"
        if not wait:
            raise VmrunError(E_TOOLS.format(vmx=vmx))
        if time.monotonic() > deadline:
            raise VmrunError(E_CANCELLED)
        time.sleep(0.02)


def cmd_delete_vm(home: Path, args: list[str]) -> str:
    need(args, 1, 1)
    vmx = open_vm(args[0])
    with locked_vm(home, vmx) as vm:
        if vm.power in ("on", "paused"):
            raise VmrunError(E_IS_RUNNING)
        conf = read_dict(vmx)
        files = [vmx, vmsd_path(vmx), vmss_path(vmx), vmx.parent / "vmware.log", vmx.with_suffix(".nvram")]
        files += [vmx.parent / s["file"] for s in read_snapshots(vmx)[0]]
        for key, value in conf.items():
            if key.endswith(".filename") and value.lower().endswith(".vmdk") and not os.path.isabs(value):
                files.append(vmx.parent / value)
        for f in files:
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            shutil.rmtree(lck_path(vmx))
    shutil.rmtree(vm.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        vmx.parent.rmdir()
    return ""


def run(argv: list[str]) -> str:
    product = "ws"
    args = list(argv)
    flags_with_value = {"-T", "-h", "-P", "-u", "-p", "-vp", "-gu", "-gp"}
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag not in flags_with_value or not args:
            raise UsageError(f"Invalid argument: {flag}")
        value = args.pop(0)
        if flag == "-T":
            if value not in PRODUCTS:
                raise UsageError(f"Invalid argument: -T {value}")
            product = value
    if not args:
        raise UsageError("")
    verb, params = args[0], args[1:]
    home = sim_home()
    if product == "player" and verb.lower() in PLAYER_REFUSES:
        if params:
            open_vm(params[0])
        raise VmrunError(E_PLAYER_UNSUPPORTED)
    table = {
        "start": lambda: cmd_start(home, params),
        "stop": lambda: cmd_stop(home, params),
        "reset": lambda: cmd_reset(home, params),
        "suspend": lambda: cmd_suspend(home, params),
        "pause": lambda: cmd_pause(home, params, True),
        "unpause": lambda: cmd_pause(home, params, False),
        "list": lambda: cmd_list(home, params),
        "listsnapshots": lambda: cmd_list_snapshots(home, params),
        "snapshot": lambda: cmd_snapshot(home, params),
        "reverttosnapshot": lambda: cmd_revert(home, params),
        "deletesnapshot": lambda: cmd_delete_snapshot(home, params),
        "clone": lambda: cmd_clone(home, params),
        "connectnameddevice": lambda: cmd_named_device(home, params, True),
        "disconnectnameddevice": lambda: cmd_named_device(home, params, False),
        "checktoolsstate": lambda: cmd_check_tools(home, params),
        "getguestipaddress": lambda: cmd_guest_ip(home, params),
        "deletevm": lambda: cmd_delete_vm(home, params),
    }
    handler = table.get(verb.lower())
    if handler is None:
        raise VmrunError(f"vmrun_sim does not simulate the command '{verb}'")
    return handler()


def log_call(argv: list[str]) -> None:
    """Record each call (argv and locale) in $VMRUNSIM_HOME/calls.log for tests to inspect."""
    home = os.environ.get("VMRUNSIM_HOME")
    if home and os.path.isdir(home):
        entry = {"argv": argv, "LANG": os.environ.get("LANG"), "LC_ALL": os.environ.get("LC_ALL")}
        with contextlib.suppress(OSError), open(os.path.join(home, "calls.log"), "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--vmx-process"] and len(argv) == 2:
        vmx_process_main(Path(argv[1]))
        return 0
    log_call(argv)
    try:
        out = run(argv)
    except VmrunError as exc:
        sys.stdout.write(f"Error: {exc}\n")
        return EXIT_ERROR
    except Outcome as exc:
        sys.stdout.write(exc.out)
        return exc.status
    except UsageError as exc:
        sys.stdout.write((f"{exc}\n" if str(exc) else "") + USAGE)
        return EXIT_ERROR
    sys.stdout.write(out)
    return 0


# -- for test harnesses ----------------------------------------------------------------------
def guest_view(home: Path, vmx: Path) -> dict[str, Any]:
    """The simulated guest of ``vmx`` as a test probe sees it, and the VM's simulated power."""
    with locked_vm(home, Path(vmx)) as vm:
        now = time.time()
        g = vm.guest
        ready = vm.power in ("on", "paused") and g["booted_at"] is not None and now >= g["booted_at"]
        return {
            "power": vm.power,
            "suspended": vm.suspended(),
            "pid": vm.data["pid"],
            "ready": ready,
            "counter": counter(g, now),
            "boots": g["boots"],
            "presses": g["presses"],
            "link_up": g["link_up"],
        }


def set_profile(home: Path, display_name: str, **knobs: Any) -> None:
    """Set guest behaviour knobs (``ignore_power_button``, ``tools``) for VMs of that displayName."""
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    write_atomic(home / "profiles" / f"{display_name}.json", json.dumps(knobs))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
