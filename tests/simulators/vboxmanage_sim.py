#!/usr/bin/env python3
"""VBOXMANAGE SIMULATOR -- not VirtualBox. A stateful stand-in for ``VBoxManage`` 7 used by vmctl's tests.

VirtualBox cannot be installed on the machines vmctl is developed on, so the VirtualBox backend is
tested against this script. It is invoked exactly like ``VBoxManage`` (``vboxmanage_sim.py
[-q|--nologo] <command> ...``), keeps its whole state (the registry of machines and media, each
machine's settings, runtime, snapshots and simulated guest) in the directory named by the
environment variable ``VBOXSIM_HOME``, and reproduces VBoxManage 7's output formats and
behaviour for every verb vmctl's backend uses:

``--version``, ``list vms|runningvms|systemproperties``, ``showvminfo <vm> --machinereadable``, ``createvm
--name --basefolder [--ostype] --register``, ``modifyvm`` (``--memory --cpus --ioapic --acpi
--boot<N> --nic1 --natpf1 --cableconnected1 --nat-localhostreachable1 --uart1 --uartmode1
--cpuexecutioncap --vrde --vrdeport --vrdeaddress --vrdeauthtype --vrdeauthlibrary --vrdeextpack
--vrdeproperty``; ``list extpacks``, with no pack where ``$VBOXSIM_HOME/no-extpack`` exists),
``storagectl --name --add --controller --portcount --bootable``, ``storageattach --storagectl
--port --device --type hdd --medium <file>|none [--mtype normal|multiattach|immutable]``,
``sharedfolder add --name --hostpath``, ``setextradata``/``getextradata`` (including
``enumerate``), ``startvm --type headless``, ``controlvm pause|resume|reset|poweroff|savestate|
acpipowerbutton|setlinkstate1 on|off|cpuexecutioncap N|screenshotpng FILE``, ``discardstate``, ``snapshot <vm>
take|restore|restorecurrent|delete|list [--machinereadable]``, ``unregistervm [--delete]``,
``metrics setup|query``, ``import <ovf|ova> [--dry-run] [--vsys 0] [--vmname] [--basefolder]
[--memory] [--cpus]``.

What was checked, and where (read with the project's search tool, not copied):

* The VirtualBox manual (docs.oracle.com "VBoxManage showvminfo", "storageattach" with
  ``--mtype ... multiattach``, "createmedium --diffparent", "Special Image Write Modes",
  "VBoxManage metrics": no metrics are collected until ``metrics setup``; collection only for
  running VMs, data lost when the VM stops) and the SDK reference (virtualbox.org/sdkref
  "VirtualBox COM result codes": VBOX_E_OBJECT_NOT_FOUND 0x80BB0001, VBOX_E_INVALID_VM_STATE
  0x80BB0002, VBOX_E_VM_ERROR 0x80BB0003, VBOX_E_FILE_ERROR 0x80BB0004,
  VBOX_E_INVALID_OBJECT_STATE 0x80BB0007, VBOX_E_OBJECT_IN_USE 0x80BB000C; IConsole's
  powerUp/powerDown/pause/resume/powerButton/reset).
* VBoxManage's own sources (the VirtualBox/virtualbox mirror, 7.1): ``VBoxManageInfo.cpp``
  (machine-readable ``key="value"`` lines, numbers unquoted, ``\\`` and ``"`` escaped,
  ``VMState`` short names such as ``poweroff``/``aborted``/``saved``/``aborted-saved``/
  ``running``/``paused``/``gurumeditation``/``starting``/``stopping``/``saving``/``restoring``/
  ``onlinesnapshotting``, ``VMStateChangeTime`` as an ISO time with nanoseconds,
  ``VMStateFile`` when saved, ``"SATA-0-0"``/``"SATA-ImageUUID-0-0"`` with quoted names,
  ``nicN``/``cableconnectedN``/``natnetN``/``Forwarding(i)="name,tcp,ip,port,,port"``,
  ``uartN="0x03f8,4"``/``uartmodeN="file,PATH"``, ``SharedFolderNameMachineMapping1``, the
  snapshot tree as ``SnapshotName``/``SnapshotName-1``/``SnapshotName-1-1`` with
  ``CurrentSnapshotName``/``CurrentSnapshotUUID``/``CurrentSnapshotNode``, and
  ``name="<inaccessible>"``), ``VBoxManageSnapshot.cpp`` (``Snapshot taken. UUID: ...``,
  ``Restoring snapshot 'n' (uuid)``, ``Deleting snapshot ...``, and ``This machine does not
  have any snapshots`` printed to stdout with exit code 1 for an empty ``list``),
  ``VBoxManageControlVM.cpp`` (``Machine 'x' is not currently running.``, savestate pauses
  first), ``VBoxManageMisc.cpp`` (``getextradata``'s ``Value: ...``/``No value set!``/``Key:
  ..., Value: ...``; ``unregistervm --delete`` deletes every attached hard disk returned by
  ``Unregister(DetachAllReturnHardDisksOnly)``, so a base attached normally is deleted too),
  ``VBoxManageMetrics.cpp`` (the ``Object Metric Values`` table, ``%d.%02d%`` and ``%d kB``)
  and ``glue/errorprint.cpp`` (``VBoxManage: error: <text>``, ``VBoxManage: error: Details:
  code VBOX_E_... (0x80bb000N), component ..., interface ..., callee nsISupports``,
  ``VBoxManage: error: Context: "..." at line N of file VBoxManageX.cpp``). Line numbers in
  the Context lines below are illustrative.
* Transcripts of real runs (``Virtual machine 'x' is created and registered.`` /
  ``UUID: ...`` / ``Settings file: '...'``, ``Waiting for VM "x" to power on...`` /
  ``VM "x" has been successfully started.``, lock errors ``The machine 'x' is already locked
  by a session (or being locked or unlocked)`` with ``VBOX_E_INVALID_OBJECT_STATE
  (0x80bb0007)``) and BOINC's vboxwrapper, which retries that error with exponential backoff,
  parses ``(0x...)`` from the output whatever the exit code, and reads the VM's process id
  from the ``Process ID: N`` line of ``<LogFldr>/VBox.log``.

What real captures showed (``tests/realworld/virtualbox/``, compared with this simulator's output
by ``tests/test_virtualbox_realworld.py``): snapshot names and descriptions printed with a plain
printf, unescaped (VBoxManageInfo.cpp ``showSnapshots``); ``SessionName="headless"`` and
``VideoMode="720,400,0"@0,0 1`` for a machine with a session; ``VMStateChangeTime`` in
milliseconds without ``Z``; controlvm's ``Machine in invalid state 12 -- stopping.`` (the
MachineState number and machineStateToName's long name, no COM code); a missing snapshot
reported by component SessionMachine. Under a locale whose charset is not UTF-8 (``LANG=C``)
the simulator prints nothing and exits 0, as VirtualBox 7.0 does (hashicorp/vagrant#13145); with
``VBOXSIM_C_LOCALE=ascii`` it behaves as 7.1 (VirtualBox/virtualbox#371): non-ASCII output
becomes ``?`` and a non-ASCII argument fails with ``VBoxManage: fatal error: RTR3Init:
VERR_NO_TRANSLATION``. ``VBOXSIM_NO_VBOXDRV=1`` prints the missing-kernel-module warning of
the VBox.sh wrapper before every answer (``--version`` included) and fails ``startvm``.
``list systemproperties`` prints the first lines of 7.0's answer.

Quirks reproduced on demand through ``$VBOXSIM_HOME/faults.json`` (see :func:`add_fault`):
``lock`` (the transient VBOX_E_INVALID_OBJECT_STATE error, the command not done), ``fail``
(an injected error with a chosen code and exit status, e.g. exit 0 with an error on stderr),
``exit0`` (genuine errors of a verb exit 0), ``startvm_nonzero`` (``startvm`` prints success,
then exits 1), ``slow`` (``startvm`` returns while the VM is still ``starting`` or
``restoring`` for some seconds). Rules match a verb (``*`` for all) and optionally a
sub-command, fire every ``every``-th matching call, and expire after ``count`` firings.

The simulated VM. ``startvm`` launches a real process (``python -c`` that mostly sleeps and
burns a little CPU in proportion to the CPU execution cap; its command line carries
``--startvm <uuid>`` like VBoxHeadless's) and writes its pid into ``Logs/VBox.log``; pause
stops it with SIGSTOP, resume continues it; poweroff, savestate and a guest shutdown kill it;
if it dies by itself the machine becomes ``aborted``, as VBoxSVC reports it. The process
exits by itself within a second when the simulator's state no longer names it, so a crashed
test leaves nothing running. The simulated guest is a counter advancing every 0.5 s of
running time, a count of power-button presses and of boots, and the NIC's link state; it is
saved in saved state and in online snapshots. A pressed power button powers the guest off
after 0.3 s, passing through ``stopping`` (unless ``$VBOXSIM_HOME/guests/<name>.json`` says
``{"ignore_power_button": true}``). The same profile can make the guest finish a job by itself:
``{"poweroff_after": 5, "files": {"<share tag>": {"out.txt": "..."}}}`` writes those files into
the shared folders and powers the guest off after 5 s of running time. Tests read the guest with
:func:`guest_view`.

Not simulated: real disks (media are small placeholder files), networking (port forwards are
recorded, not opened), shared folders' contents, the GUI, the COM API.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid as uuidlib
import zlib
from pathlib import Path
from typing import Any

VERSION = "7.0.20r163906"
TICK = 0.5
SHUTDOWN_DELAY = 0.3
STOPPING_TIME = 0.2
PROGRESS = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
ONLINE = ("running", "paused", "starting", "stopping", "saving", "restoring", "onlinesnapshotting", "gurumeditation")

HRESULTS = {
    "VBOX_E_OBJECT_NOT_FOUND": 0x80BB0001,
    "VBOX_E_INVALID_VM_STATE": 0x80BB0002,
    "VBOX_E_VM_ERROR": 0x80BB0003,
    "VBOX_E_FILE_ERROR": 0x80BB0004,
    "VBOX_E_IPRT_ERROR": 0x80BB0005,
    "VBOX_E_INVALID_OBJECT_STATE": 0x80BB0007,
    "VBOX_E_OBJECT_IN_USE": 0x80BB000C,
    "E_INVALIDARG": 0x80070057,
    "E_FAIL": 0x80004005,
    "NS_ERROR_FAILURE": 0x80004005,
}

# The VM process: sleeps, burns cap% of 1 ms every 20 ms, exits once the pid file stops naming it.
# The simulator writes the pid file after starting the process, so until the file has named it
# once the process waits up to 2 s for it (on a loaded host it read the previous run's file first
# and exited at once: the machine then read as aborted right after startvm).
VM_PROCESS_CODE = r"""
import json, os, sys, time
pidfile = sys.argv[1]
me = os.getpid()
cap = 100
checked = 0.0
started = time.monotonic()
named = False
while True:
    now = time.monotonic()
    if now - checked > 0.25:
        checked = now
        try:
            with open(pidfile) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        if data.get("pid") == me:
            named = True
        elif named or now - started > 2.0:
            sys.exit(0)
        cap = int(data.get("cap", 100)) if data.get("pid") == me else cap
    end = time.monotonic() + 0.001 * cap / 100
    while time.monotonic() < end:
        pass
    time.sleep(0.02)
"""


class VBoxError(Exception):
    """A VBoxManage error: printed as VirtualBox prints it."""

    def __init__(
        self,
        text: str,
        code: str | None = None,
        component: str = "MachineWrap",
        interface: str = "IMachine",
        context: str | None = None,
        source: str = "VBoxManageMisc.cpp",
        line: int = 1000,
        status: int = 1,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.component = component
        self.interface = interface
        self.context = context
        self.source = source
        self.line = line
        self.status = status

    def render(self) -> str:
        out = f"VBoxManage: error: {self.text}\n"
        if self.code:
            hr = HRESULTS[self.code]
            out += (
                f"VBoxManage: error: Details: code {self.code} (0x{hr:08x}), component {self.component}, "
                f"interface {self.interface}, callee nsISupports\n"
            )
        if self.context:
            out += f'VBoxManage: error: Context: "{self.context}" at line {self.line} of file {self.source}\n'
        return out


class PlainError(VBoxError):
    """An RTMsgError of VBoxManage itself: one ``VBoxManage: error:`` line, no Details/Context."""

    def __init__(self, text: str, status: int = 1) -> None:
        super().__init__(text, status=status)


class SyntaxErr(VBoxError):
    def __init__(self, text: str) -> None:
        super().__init__(text, status=2)

    def render(self) -> str:
        return f"VBoxManage: error: {self.text}\n\nUsage:\n\nVBoxManage [<general option>] <command>\n"


def not_found(
    name: str, source: str, context: str = "FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())"
) -> VBoxError:
    return VBoxError(
        f"Could not find a registered machine named '{name}'",
        "VBOX_E_OBJECT_NOT_FOUND",
        "VirtualBoxWrap",
        "IVirtualBox",
        context,
        source,
        line=2567,
    )


def lock_error(name: str, source: str, context: str, launching: bool = False) -> VBoxError:
    text = (
        f"The machine '{name}' is already locked by a session (or being locked or unlocked)"
        if launching
        else f"The machine '{name}' is already locked for a session (or being unlocked)"
    )
    return VBoxError(text, "VBOX_E_INVALID_OBJECT_STATE", "MachineWrap", "IMachine", context, source, line=727)


#: MachineState numbers of VirtualBox 7 (VirtualBox.xidl; 6.1 and older lack AbortedSaved = 5).
STATE_NUMBERS = {
    "poweroff": 1,
    "saved": 2,
    "teleported": 3,
    "aborted": 4,
    "aborted-saved": 5,
    "running": 6,
    "paused": 7,
    "gurumeditation": 8,
    "starting": 11,
    "stopping": 12,
    "saving": 13,
    "restoring": 14,
    "onlinesnapshotting": 19,
}
#: machineStateToName(state, false): the long names VBoxManage prints in messages.
STATE_LONG = {
    "poweroff": "powered off",
    "gurumeditation": "guru meditation",
    "onlinesnapshotting": "online snapshotting",
}


def state_name_long(state: str) -> str:
    names = {
        "poweroff": "PoweredOff",
        "saved": "Saved",
        "aborted": "Aborted",
        "aborted-saved": "AbortedSaved",
        "running": "Running",
        "paused": "Paused",
        "gurumeditation": "Stuck",
        "starting": "Starting",
        "stopping": "Stopping",
        "saving": "Saving",
        "restoring": "Restoring",
    }
    return names.get(state, state)


def invalid_vm_state(state: str, context: str, source: str = "VBoxManageControlVM.cpp") -> VBoxError:
    return VBoxError(
        f"Invalid machine state: {state_name_long(state)}",
        "VBOX_E_INVALID_VM_STATE",
        "ConsoleWrap",
        "IConsole",
        context,
        source,
        line=235,
    )


# ---------------------------------------------------------------------------------------------
# State on disk
# ---------------------------------------------------------------------------------------------


def home() -> Path:
    value = os.environ.get("VBOXSIM_HOME")
    if not value:
        sys.stderr.write("VBoxManage: error: VBOXSIM_HOME is not set (this is the vmctl VBoxManage simulator)\n")
        sys.exit(1)
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def now() -> float:
    return time.time()


def iso(t: float) -> str:
    """A time as ``VMStateChangeTime`` prints it: milliseconds in a nanosecond field, no ``Z``.

    VBoxManageInfo.cpp formats the millisecond timestamp with RTTimeSpecToString into a 30-byte
    buffer; every captured output reads ``2019-02-09T21:00:33.575000000`` (tests/realworld/).
    """
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}000000"


class Registry:
    """The simulator's state: machines and media, in ``$VBOXSIM_HOME/state.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "state.json"
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {"machines": {}, "media": {}, "calls": 0}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @property
    def machines(self) -> dict[str, dict[str, Any]]:
        return self.data["machines"]  # type: ignore[no-any-return]

    @property
    def media(self) -> dict[str, dict[str, Any]]:
        return self.data["media"]  # type: ignore[no-any-return]

    def find(self, name_or_uuid: str, source: str = "VBoxManageInfo.cpp") -> dict[str, Any]:
        for m in self.machines.values():
            if m["uuid"] == name_or_uuid or m["name"] == name_or_uuid:
                return m
        raise not_found(name_or_uuid, source)

    def pidfile(self, m: dict[str, Any]) -> Path:
        return self.root / "pids" / f"{m['uuid']}.json"


@contextlib.contextmanager
def locked_registry(root: Path | None = None) -> Any:
    root = root or home()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        reg = Registry(root)
        try:
            settle(reg)
            yield reg
        finally:
            reg.save()
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The simulated guest and VM process
# ---------------------------------------------------------------------------------------------


def new_guest(old: dict[str, Any] | None, link_up: bool) -> dict[str, Any]:
    old = old or {}
    return {
        "counter_base": 0.0,
        "running_since": None,
        "presses": old.get("presses", 0),
        "boots": old.get("boots", 0) + 1,
        "link_up": link_up,
        "shutdown_at": None,
        "shutdown_left": None,
    }


def guest_counter(g: dict[str, Any], t: float | None = None) -> int:
    extra = 0.0
    if g.get("running_since") is not None:
        extra = ((t or now()) - g["running_since"]) / TICK
    return int(g["counter_base"] + extra)


def freeze(g: dict[str, Any]) -> None:
    if g.get("running_since") is not None:
        g["counter_base"] += (now() - g["running_since"]) / TICK
        g["running_since"] = None
    if g.get("shutdown_at") is not None:
        g["shutdown_left"] = max(0.0, g["shutdown_at"] - now())
        g["shutdown_at"] = None


def thaw(g: dict[str, Any]) -> None:
    if g.get("running_since") is None:
        g["running_since"] = now()
    if g.get("shutdown_left") is not None:
        g["shutdown_at"] = now() + g["shutdown_left"]
        g["shutdown_left"] = None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def serial(m: dict[str, Any], line: str) -> None:
    uart = m.get("uart", {}).get("1")
    if uart and uart.get("mode") == "file" and uart.get("path"):
        with contextlib.suppress(OSError), open(uart["path"], "a") as f:
            f.write(line + "\n")


def set_state(m: dict[str, Any], state: str) -> None:
    if m["state"] != state:
        m["state"] = state
        m["state_changed"] = now()


def cable(m: dict[str, Any]) -> bool:
    nic = m.get("nics", {}).get("1")
    return bool(nic and nic.get("type") != "none" and nic.get("cable", True))


def launch_process(reg: Registry, m: dict[str, Any]) -> int:
    pidfile = reg.pidfile(m)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            VM_PROCESS_CODE,
            str(pidfile),
            "--comment",
            m["name"],
            "--startvm",
            m["uuid"],
            "--vrde",
            "config",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    cap = m.get("cpucap", 100)
    pidfile.write_text(json.dumps({"pid": proc.pid, "cap": cap}))
    logs = Path(m["folder"]) / "Logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "VBox.log"
    for i in (2, 1):
        older = logs / (f"VBox.log.{i - 1}" if i > 1 else "VBox.log")
        if older.exists():
            os.replace(older, logs / f"VBox.log.{i}")
    stamp = iso(now())
    log.write_text(
        f"VirtualBox VM {VERSION.replace('r', ' r')} linux.amd64 (vmctl VBoxManage simulator) release log\n"
        f"00:00:00.000000 Log opened {stamp}\n"
        "00:00:00.000000 Build Type: release\n"
        "00:00:00.000000 OS Product: Linux\n"
        f"00:00:00.000000 Executable: {sys.executable} (simulated VBoxHeadless)\n"
        f"00:00:00.000000 Process ID: {proc.pid}\n"
        "00:00:00.000000 Package type: LINUX_64BITS_GENERIC\n"
    )
    return proc.pid


def kill_process(reg: Registry, m: dict[str, Any]) -> None:
    rt = m.get("runtime") or {}
    pid = rt.get("pid")
    with contextlib.suppress(OSError):
        reg.pidfile(m).unlink()
    if pid and pid_alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    m["runtime"] = None


def update_pidfile(reg: Registry, m: dict[str, Any]) -> None:
    rt = m.get("runtime")
    if rt:
        reg.pidfile(m).write_text(json.dumps({"pid": rt["pid"], "cap": rt.get("cap", m.get("cpucap", 100))}))


def power_down(reg: Registry, m: dict[str, Any], state: str = "poweroff") -> None:
    freeze(m["guest"])
    m["guest"]["shutdown_at"] = m["guest"]["shutdown_left"] = None
    kill_process(reg, m)
    m["transition"] = None
    set_state(m, state)


def settle(reg: Registry) -> None:
    """Bring every machine up to date: finished transitions, guest shutdowns, dead processes."""
    t = now()
    for m in reg.machines.values():
        g = m["guest"]
        tr = m.get("transition")
        if tr and t >= tr["until"]:
            m["transition"] = None
            if tr["then"] == "poweroff":
                power_down(reg, m)
                serial(m, "reboot: Power down")
            else:
                set_state(m, tr["then"])
                if tr["then"] == "running":
                    thaw(g)
        profile = guest_profile(reg.root, m["name"]) if m["state"] == "running" else {}
        if profile.get("poweroff_after") is not None and g.get("shutdown_at") is None:
            uptime = (g["counter_base"] + ((t - g["running_since"]) / TICK if g.get("running_since") else 0)) * TICK
            if uptime >= float(profile["poweroff_after"]):
                # The guest finished its work: it leaves its files in the shares and powers off.
                for share in m.get("shared", []):
                    for rel, content in profile.get("files", {}).get(share["name"], {}).items():
                        target = Path(share["path"]) / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(content)
                g["shutdown_at"] = t
        if m["state"] == "running" and g.get("shutdown_at") is not None and t >= g["shutdown_at"]:
            freeze(g)
            g["shutdown_at"] = g["shutdown_left"] = None
            set_state(m, "stopping")
            m["transition"] = {"until": t + STOPPING_TIME, "then": "poweroff"}
        rt = m.get("runtime")
        if m["state"] in ONLINE and rt and not pid_alive(rt.get("pid")):
            power_down(reg, m, "aborted")


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


def add_fault(root: Path | str, kind: str, verb: str = "*", sub: str | None = None, **options: Any) -> None:
    """Add a fault rule to ``root/faults.json`` (for tests). Options: count, every, code, exit, seconds."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = root / "faults.json"
        rules = json.loads(path.read_text()) if path.exists() else []
        rule = {"kind": kind, "verb": verb, "sub": sub, "count": options.pop("count", 1), "every": 1, "seen": 0}
        rule.update(options)
        rules.append(rule)
        path.write_text(json.dumps(rules))
    finally:
        os.close(fd)


def clear_faults(root: Path | str) -> None:
    with contextlib.suppress(OSError):
        (Path(root) / "faults.json").unlink()


def take_fault(root: Path, kind: str, verb: str, sub: str | None) -> dict[str, Any] | None:
    """The first live rule of ``kind`` matching this call, counting the call (under the lock)."""
    path = root / "faults.json"
    if not path.exists():
        return None
    rules = json.loads(path.read_text())
    hit = None
    for rule in rules:
        if rule["kind"] != kind or rule["verb"] not in ("*", verb) or (rule.get("sub") not in (None, sub)):
            continue
        if rule.get("count") is not None and rule["count"] <= 0:
            continue
        rule["seen"] = rule.get("seen", 0) + 1
        if rule["seen"] % max(1, int(rule.get("every", 1))) == 0:
            if rule.get("count") is not None:
                rule["count"] -= 1
            hit = rule
            break
    path.write_text(json.dumps(rules))
    return hit


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def mr_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def mr(key: str, value: Any, quote_name: bool = False) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key}={value}\n"
    name = f'"{mr_escape(key)}"' if quote_name else key
    return f'{name}="{mr_escape(str(value))}"\n'


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def save_settings(m: dict[str, Any]) -> None:
    """Write the machine's settings file (JSON here; real VirtualBox writes XML)."""
    cfg = Path(m["cfg_file"])
    cfg.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in m.items() if k not in ("runtime", "guest", "saved_guest", "transition")}
    cfg.write_text(json.dumps(keep, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def extpack_installed(reg: Registry) -> bool:
    """The Oracle extension pack (VRDE's VBoxVRDP) is installed unless ``$VBOXSIM_HOME/no-extpack`` exists."""
    return not (reg.root / "no-extpack").exists()


#: ``modifyvm``'s VRDE options (VBoxManageModifyVM.cpp, both spellings)
VRDE_OPTS = {
    "--vrde": "enabled",
    "--vrdeport": "ports",
    "--vrde-port": "ports",
    "--vrdeaddress": "address",
    "--vrde-address": "address",
    "--vrdeauthtype": "authtype",
    "--vrde-auth-type": "authtype",
    "--vrdeauthlibrary": "authlibrary",
    "--vrde-auth-library": "authlibrary",
    "--vrdeextpack": "extpack",
    "--vrde-extpack": "extpack",
}
VRDE_PROPERTY = ("--vrdeproperty", "--vrde-property")


def vrde_lines(m: dict[str, Any], running: bool) -> str:
    """VBoxManageInfo.cpp's machine-readable VRDE block (as in the ohai capture in
    tests/realworld/virtualbox): ``vrdeport`` is the port the running server bound
    (IVRDEServerInfo::port: -1 when not started, 0 when it failed to bind), then the properties."""
    v = m.get("vrde")
    if not v or not v.get("enabled"):
        return 'vrde="off"\n'
    port = m.get("runtime", {}).get("vrdeport", -1) if running else -1
    return (
        f'vrde="on"\nvrdeport={port}\nvrdeports="{v.get("ports", "3389")}"\nvrdeaddress="{v.get("address", "")}"\n'
        f'vrdeauthtype="{v.get("authtype", "null")}"\nvrdemulticon="off"\nvrdereusecon="off"\nvrdevideochannel="off"\n'
        f'vrdeproperty[TCP/Ports]="{v.get("ports", "3389")}"\nvrdeproperty[TCP/Address]="{v.get("address", "")}"\n'
        + "".join(f'vrdeproperty[{k}]="{val}"\n' for k, val in sorted(v.get("properties", {}).items()))
    )


def vrde_bind(reg: Registry, m: dict[str, Any]) -> int:
    """The port a starting VM's VRDE server binds: the first of ``TCP/Ports`` (ranges "a-b" and
    lists) that no other running machine holds and the host can bind; 0 when none is free; -1
    when VRDE is off or the extension pack is missing (the server is not started)."""
    v = m.get("vrde")
    if not v or not v.get("enabled") or not extpack_installed(reg):
        return -1
    taken = {o.get("runtime", {}).get("vrdeport") for o in reg.machines.values() if o is not m and o["state"] in ONLINE}
    for part in str(v.get("ports", "3389")).split(","):
        lo, _, hi = part.strip().partition("-")
        for port in range(int(lo), int(hi or lo) + 1):
            if port in taken:
                continue
            with socket.socket() as s:
                try:
                    # the simulated VM process does not listen: a bind probe (on loopback when
                    # no address is set) says whether something else holds the port
                    s.bind((v.get("address") or "127.0.0.1", port))
                except OSError:
                    continue
            return port
    return 0


def cmd_list(reg: Registry, args: list[str], out: list[str]) -> None:
    if not args or args[0] not in ("vms", "runningvms", "hdds", "systemproperties", "extpacks"):
        raise SyntaxErr(f"Invalid parameter '{args[0] if args else ''}'")
    if args[0] == "extpacks":
        # VBoxManageList.cpp listExtensionPacks (7.0): "Extension Packs: N", then per pack the
        # "Pack no. %2zu:   %ls" block; the Oracle pack names its VRDE module VBoxVRDP.
        if not extpack_installed(reg):
            out.append("Extension Packs: 0\n")
            return
        out.append(
            "Extension Packs: 1\n"
            "Pack no. 0:   Oracle VM VirtualBox Extension Pack\n"
            f"Version:      {VERSION.split('r')[0]}\n"
            f"Revision:     {VERSION.split('r')[1]}\n"
            "Edition:      \n"
            "Description:  Oracle Cloud Infrastructure integration, Host Webcam, VirtualBox RDP, PXE ROM, Disk "
            "Encryption, NVMe, full VM encryption.\n"
            "VRDE Module:  VBoxVRDP\n"
            "Crypto Module: VBoxPuelCrypto\n"
            "Usable:       true\n"
            "Why unusable: \n"
        )
        return
    if args[0] == "systemproperties":
        # The first lines of VirtualBox 7.0's answer (GNS3/gns3-server#2266); the rest is not simulated.
        out.append(
            "API version:                     7_0\n"
            "Minimum guest RAM size:          4 Megabytes\n"
            "Maximum guest RAM size:          2097152 Megabytes\n"
            "Minimum video RAM size:          0 Megabytes\n"
            "Maximum video RAM size:          256 Megabytes\n"
            "Maximum guest monitor count:     64\n"
            "Minimum guest CPU count:         1\n"
            "Maximum guest CPU count:         64\n"
            f"Default machine folder:          {home() / 'VirtualBox VMs'}\n"
        )
        return
    if args[0] == "hdds":
        for u, med in reg.media.items():
            out.append(f"UUID:           {u}\nParent UUID:    {med.get('parent') or 'base'}\n")
            out.append(f"State:          created\nType:           {med['type']}\nLocation:       {med['path']}\n\n")
        return
    for m in sorted(reg.machines.values(), key=lambda m: m.get("registered", 0)):
        if args[0] == "runningvms" and m["state"] not in ONLINE:
            continue
        out.append(f'"{m["name"]}" {{{m["uuid"]}}}\n')


def snapshot_lines(m: dict[str, Any]) -> list[str]:
    snaps = m["snapshots"]
    roots = [u for u in m["snapshot_order"] if snaps[u]["parent"] is None]
    lines: list[str] = []

    def walk(u: str, prefix: str) -> None:
        s = snaps[u]
        # VBoxManageInfo.cpp showSnapshots prints these with a plain RTPrintf: not escaped.
        lines.append(f'SnapshotName{prefix}="{s["name"]}"\n')
        lines.append(f'SnapshotUUID{prefix}="{u}"\n')
        if s.get("description"):
            lines.append(f'SnapshotDescription{prefix}="{s["description"]}"\n')
        if m.get("current_snapshot") == u:
            lines.append(f'CurrentSnapshotName="{s["name"]}"\n')
            lines.append(f'CurrentSnapshotUUID="{u}"\n')
            lines.append(f'CurrentSnapshotNode="SnapshotName{prefix}"\n')
        children = [c for c in m["snapshot_order"] if snaps[c]["parent"] == u]
        for i, c in enumerate(children, 1):
            walk(c, f"{prefix}-{i}")

    if roots:
        walk(roots[0], "")
    return lines


def cmd_showvminfo(reg: Registry, args: list[str], out: list[str]) -> None:
    names = [a for a in args if not a.startswith("-")]
    if not names:
        raise SyntaxErr("VM name or UUID required")
    m = reg.find(names[0], "VBoxManageInfo.cpp")
    if "--machinereadable" not in args:
        out.append(f"Name:                        {m['name']}\nUUID:                        {m['uuid']}\n")
        out.append(
            f"State:                       {state_name_long(m['state']).lower()} (since {iso(m['state_changed'])})\n"
        )
        return
    if m.get("inaccessible"):
        out.append('name="<inaccessible>"\n' + f'UUID="{m["uuid"]}"\n')
        return
    running = m["state"] in ONLINE
    cap = (m.get("runtime") or {}).get("cap", m.get("cpucap", 100)) if running else m.get("cpucap", 100)
    o = out.append
    o(mr("name", m["name"]))
    o(mr("encryption", "disabled"))
    o(mr("groups", "/"))
    o(mr("platformArchitecture", "x86"))
    o(mr("ostype", m.get("ostype_desc", "Linux 2.6 / 3.x / 4.x / 5.x (64-bit)")))
    o(mr("UUID", m["uuid"]))
    o(mr("CfgFile", m["cfg_file"]))
    o(mr("SnapFldr", str(Path(m["folder"]) / "Snapshots")))
    o(mr("LogFldr", str(Path(m["folder"]) / "Logs")))
    o(mr("hardwareuuid", m["uuid"]))
    o(mr("memory", int(m["memory"])))
    o(mr("pagefusion", "off"))
    o(mr("vram", 16))
    o(mr("cpuexecutioncap", int(cap)))
    o(mr("chipset", "piix3"))
    o(mr("firmware", "BIOS"))
    o(mr("cpus", int(m["cpus"])))
    o(mr("hpet", "off"))
    o(mr("pae", "on"))
    o(mr("longmode", "on"))
    o(mr("cpuid-portability-level", 0))
    o(mr("bootmenu", "messageandmenu"))
    for i in range(1, 5):
        o(mr(f"boot{i}", m.get("boot", {}).get(str(i), "none")))
    o(mr("acpi", m.get("acpi", "on")))
    o(mr("ioapic", m.get("ioapic", "on")))
    o(mr("biosapic", "apic"))
    o(mr("biossystemtimeoffset", 0))
    o(mr("rtcuseutc", "off"))
    o(mr("paravirtprovider", "default"))
    o(mr("effparavirtprovider", "kvm"))
    o(f'VMState="{m["state"]}"\n')
    o(f'VMStateChangeTime="{iso(m["state_changed"])}"\n')
    if m.get("state_file"):
        o(f'VMStateFile="{m["state_file"]}"\n')
    o(mr("graphicscontroller", "vmsvga"))
    o(mr("monitorcount", 1))
    o(mr("vmprocpriority", "default"))
    for i, ctl in enumerate(m["controllers"]):
        o(mr(f"storagecontrollername{i}", ctl["name"]))
        o(mr(f"storagecontrollertype{i}", ctl["type"]))
        o(f'storagecontrollerinstance{i}="0"\n')
        o(f'storagecontrollermaxportcount{i}="30"\n')
        o(f'storagecontrollerportcount{i}="{ctl["ports"]}"\n')
        o(f'storagecontrollerbootable{i}="{ctl.get("bootable", "on")}"\n')
    for ctl in m["controllers"]:
        for port in range(int(ctl["ports"])):
            key = f"{ctl['name']}-{port}-0"
            att = m["attachments"].get(key)
            if att is None:
                o(mr(key, "none", quote_name=True))
                continue
            med = reg.media.get(att["medium"], {"path": "?"})
            o(mr(key, med["path"], quote_name=True))
            o(mr(f"{ctl['name']}-ImageUUID-{port}-0", att["medium"], quote_name=True))
            if ctl["name"].upper() in ("SATA", "USB"):
                o(mr(f"{ctl['name']}-hot-pluggable-{port}-0", "off", quote_name=True))
            o(mr(f"{ctl['name']}-nonrotational-{port}-0", "off", quote_name=True))
            o(mr(f"{ctl['name']}-discard-{port}-0", "off", quote_name=True))
    for i in range(1, 9):
        nic = m.get("nics", {}).get(str(i))
        if not nic or nic.get("type", "none") == "none":
            o(f'nic{i}="none"\n')
            continue
        o(f'natnet{i}="nat"\n')
        o(f'macaddress{i}="{nic["mac"]}"\n')
        o(f'cableconnected{i}="{"on" if nic.get("cable", True) else "off"}"\n')
        o(f'nic{i}="nat"\n')
        o(f'nictype{i}="82540EM"\n')
        o(f'nicspeed{i}="0"\n')
        o('mtu="0"\nsockSnd="64"\nsockRcv="64"\ntcpWndSnd="64"\ntcpWndRcv="64"\n')
        for j, rule in enumerate(nic.get("forwards", [])):
            o(f'Forwarding({j})="{rule}"\n')
    o(mr("hidpointing", "ps2mouse"))
    o(mr("hidkeyboard", "ps2kbd"))
    for i in range(1, 5):
        uart = m.get("uart", {}).get(str(i))
        if not uart:
            o(f'uart{i}="off"\n')
            continue
        o(f'uart{i}="0x{int(uart["io"], 16):04x},{uart["irq"]}"\n')
        if uart.get("mode") == "file":
            o(f'uartmode{i}="file,{uart["path"]}"\n')
        else:
            o(f'uartmode{i}="disconnected"\n')
        o(f'uarttype{i}="16550A"\n')
    o('audio="none"\naudio_out="off"\naudio_in="off"\nclipboard="disabled"\ndraganddrop="disabled"\n')
    if running:
        # A machine with a session prints its session's name, then (with a console) screen 0's
        # mode with RTPrintf("VideoMode=\"%d,%d,%d\"@%d,%d %d\n"): not a key="value" line.
        o(mr("SessionName", "headless"))
        o('VideoMode="720,400,0"@0,0 1\n')
    o(vrde_lines(m, running))
    o('usb="off"\nehci="off"\nxhci="off"\n')
    for i, sf in enumerate(m.get("shared", []), 1):
        o(mr(f"SharedFolderNameMachineMapping{i}", sf["name"]))
        o(mr(f"SharedFolderPathMachineMapping{i}", sf["path"]))
    if running:
        o('VRDEActiveConnection="off"\nVRDEClients==0\n')
    o('recording_started="off"\nrecording_enabled="off"\nrecording_screens=1\n')
    for line in snapshot_lines(m):
        o(line)
    o("GuestMemoryBalloon=0\n")


def cmd_createvm(reg: Registry, args: list[str], out: list[str]) -> None:
    opts = parse_opts(args, {"--name", "--basefolder", "--ostype", "--groups", "--uuid"}, {"--register", "--default"})
    name = opts.get("--name")
    if not name:
        raise SyntaxErr("Parameter --name is required")
    base = opts.get("--basefolder") or str(Path.home() / "VirtualBox VMs")
    folder = Path(base) / name
    cfg = folder / f"{name}.vbox"
    ctx = "CreateMachine(bstrSettingsFile.raw(), bstrName.raw(), platformArch, ComSafeArrayAsInParam(groups), ...)"
    if cfg.exists():
        raise VBoxError(f"Machine settings file '{cfg}' already exists", "VBOX_E_FILE_ERROR", context=ctx, line=379)
    u = opts.get("--uuid") or new_uuid()
    m: dict[str, Any] = {
        "name": name,
        "uuid": u,
        "folder": str(folder),
        "cfg_file": str(cfg),
        "ostype": opts.get("--ostype", "Other"),
        "memory": 128,
        "cpus": 1,
        "cpucap": 100,
        "boot": {"1": "floppy", "2": "dvd", "3": "disk", "4": "none"},
        "nics": {"1": {"type": "nat", "cable": True, "mac": mac_for(u), "forwards": []}},
        "uart": {},
        "controllers": [],
        "attachments": {},
        "shared": [],
        "extradata": {},
        "state": "poweroff",
        "state_changed": now(),
        "state_file": None,
        "snapshots": {},
        "snapshot_order": [],
        "current_snapshot": None,
        "runtime": None,
        "transition": None,
        "guest": {"counter_base": 0.0, "running_since": None, "presses": 0, "boots": 0, "link_up": True},
        "saved_guest": None,
        "registered": now(),
    }
    if "--register" in opts:
        for other in reg.machines.values():
            if other["name"] == name:
                raise VBoxError(
                    f"Cannot register the machine '{name}' because a machine with the same name already exists",
                    "VBOX_E_OBJECT_IN_USE",
                    "VirtualBoxWrap",
                    "IVirtualBox",
                    "RegisterMachine(machine)",
                    line=393,
                )
        reg.machines[u] = m
    save_settings(m)
    out.append(f"Virtual machine '{name}' is created{' and registered' if '--register' in opts else ''}.\n")
    out.append(f"UUID: {u}\nSettings file: '{cfg}'\n")


def mac_for(u: str) -> str:
    return "080027" + u.replace("-", "")[:6].upper()


def parse_opts(args: list[str], valued: set[str], flags: set[str], indexed: tuple[str, ...] = ()) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        key, eq, inline = a.partition("=")
        if key in flags:
            opts[key] = True
            i += 1
        elif key in valued or any(key.startswith(p) and key[len(p) :].isdigit() for p in indexed):
            if eq:
                value = inline
                i += 1
            else:
                if i + 1 >= len(args):
                    raise SyntaxErr(f"Missing argument to '{key}'")
                value = args[i + 1]
                i += 2
            if key in opts and isinstance(opts[key], list):
                opts[key].append(value)
            elif key in opts:
                opts[key] = [opts[key], value]
            else:
                opts[key] = value
        else:
            raise SyntaxErr(f"Invalid parameter '{a}'")
    return opts


def require_vm_arg(args: list[str], what: str = "VM name or UUID required") -> str:
    if not args or args[0].startswith("-"):
        raise SyntaxErr(what)
    return args[0]


#: modifyvm's two spellings of the NAT engine's LocalhostReachable (VirtualBox 7.0+, default off)
LOCALHOST_REACHABLE = ("--nat-localhostreachable", "--natlocalhostreachable")


def cmd_modifyvm(reg: Registry, args: list[str], out: list[str]) -> None:
    vm = require_vm_arg(args)
    m = reg.find(vm, "VBoxManageModifyVM.cpp")
    rest = args[1:]
    # --uart1 takes two values (I/O base and IRQ) unless it is "off".
    expanded: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i].startswith("--uart") and rest[i][6:].isdigit() and i + 1 < len(rest) and rest[i + 1] != "off":
            if i + 2 >= len(rest):
                raise SyntaxErr(f"Missing argument to '{rest[i]}'")
            expanded += [rest[i], rest[i + 1] + "," + rest[i + 2]]
            i += 3
        else:
            expanded.append(rest[i])
            i += 1
    opts = parse_opts(
        expanded,
        {"--memory", "--cpus", "--ioapic", "--acpi", "--cpuexecutioncap", "--ostype", "--description"}
        | VRDE_OPTS.keys()
        | set(VRDE_PROPERTY),
        set(),
        ("--boot", "--nic", "--natpf", "--cableconnected", "--uart", "--uartmode", *LOCALHOST_REACHABLE),
    )
    ctx = "LockMachine(a->session, LockType_Write)"
    if m["state"] in ONLINE:
        raise lock_error(m["name"], "VBoxManageModifyVM.cpp", ctx)
    if m["state"] in ("saved", "aborted-saved") and set(opts) - {"--cpuexecutioncap", "--description"}:
        raise VBoxError(
            f"The machine is not mutable or in saved state (state is {state_name_long(m['state'])})",
            "VBOX_E_INVALID_VM_STATE",
            context="COMSETTER(MemorySize)(ValueUnion.u32)",
            source="VBoxManageModifyVM.cpp",
            line=812,
        )
    for key, value in opts.items():
        if key in VRDE_OPTS or key in VRDE_PROPERTY:
            set_vrde(m, key, value)
        elif key == "--memory":
            m["memory"] = int(value)
        elif key == "--cpus":
            m["cpus"] = int(value)
        elif key in ("--ioapic", "--acpi"):
            m[key[2:]] = value
        elif key == "--ostype":
            m["ostype"] = value
        elif key == "--description":
            m["description"] = value
        elif key == "--cpuexecutioncap":
            n = int(value)
            if not 1 <= n <= 100:
                raise VBoxError(
                    f"Invalid argument value (CPU execution cap {n} is out of range 1..100)",
                    "E_INVALIDARG",
                    context="COMSETTER(CPUExecutionCap)(ValueUnion.u32)",
                    source="VBoxManageModifyVM.cpp",
                    line=1021,
                )
            m["cpucap"] = n
        elif key.startswith("--boot"):
            m.setdefault("boot", {})[key[6:]] = value
        elif key.startswith("--nic"):
            nic = m["nics"].setdefault(key[5:], {"cable": True, "forwards": [], "mac": mac_for(m["uuid"])})
            if value not in ("none", "nat", "null"):
                raise SyntaxErr(f"Invalid type '{value}' specfied for NIC {key[5:]}")
            nic["type"] = value
        elif key.startswith("--natpf"):
            values = value if isinstance(value, list) else [value]
            nic = m["nics"].setdefault(
                key[7:], {"type": "nat", "cable": True, "forwards": [], "mac": mac_for(m["uuid"])}
            )
            for rule in values:
                if rule.startswith("delete"):
                    continue
                parts = rule.split(",")
                if len(parts) != 6 or parts[1] not in ("tcp", "udp"):
                    raise SyntaxErr(f"Invalid NAT port-forwarding rule '{rule}'")
                if any(f.split(",")[0] == parts[0] for f in nic["forwards"]):
                    raise VBoxError(
                        "A NAT rule of this name already exists",
                        "E_INVALIDARG",
                        "NATEngineWrap",
                        "INATEngine",
                        "AddRedirect(...)",
                        "VBoxManageModifyVM.cpp",
                        1900,
                    )
                nic["forwards"].append(rule)
        elif key.startswith(LOCALHOST_REACHABLE):
            # VBoxManageModifyVM.cpp (7.x): RTGETOPT_REQ_BOOL_ONOFF, INATEngine::LocalhostReachable
            if value not in ("on", "off"):
                raise SyntaxErr(f"Invalid parameter '{value}'")
            index = key[len(key.rstrip("0123456789")) :]
            nic = m["nics"].setdefault(index, {"type": "nat", "cable": True, "forwards": [], "mac": mac_for(m["uuid"])})
            nic["localhost_reachable"] = value == "on"
        elif key.startswith("--cableconnected"):
            nic = m["nics"].setdefault(key[16:], {"type": "nat", "forwards": [], "mac": mac_for(m["uuid"])})
            nic["cable"] = value == "on"
        elif key.startswith("--uartmode"):
            uart = m["uart"].setdefault(key[10:], {"io": "0x3F8", "irq": 4})
            if value.startswith("file "):
                uart["mode"], uart["path"] = "file", value[5:]
            elif value == "disconnected":
                uart["mode"], uart["path"] = "disconnected", ""
            else:
                raise SyntaxErr(f"Invalid UART mode '{value}'")
        elif key.startswith("--uart"):
            if value == "off":
                m["uart"].pop(key[6:], None)
            else:
                io, irq = value.split(",")
                m["uart"].setdefault(key[6:], {})
                m["uart"][key[6:]].update({"io": io, "irq": int(irq)})
    save_settings(m)


def set_vrde(m: dict[str, Any], key: str, value: str | list[str]) -> None:
    v = m.setdefault("vrde", {})
    for item in value if isinstance(value, list) else [value]:
        if key in VRDE_PROPERTY:
            # VBoxManageModifyVM.cpp: "name=value"; TCP/Ports and TCP/Address are the ones --vrdeport/address set
            name, eq, val = item.partition("=")
            if not eq:
                raise SyntaxErr(f"Invalid --vrde-property argument '{item}'")
            field = {"TCP/Ports": "ports", "TCP/Address": "address"}.get(name)
            if field:
                v[field] = val
            else:
                v.setdefault("properties", {})[name] = val
        elif VRDE_OPTS[key] == "enabled":
            if item not in ("on", "off"):
                raise SyntaxErr(f"Invalid --vrde argument '{item}'")
            v["enabled"] = item == "on"
        elif VRDE_OPTS[key] == "authtype" and item not in ("null", "external", "guest"):
            raise SyntaxErr(f"Invalid --vrdeauthtype argument '{item}'")
        elif VRDE_OPTS[key] == "ports" and not all(
            p.strip().replace("-", "", 1).isdigit() for p in ("0" if item == "default" else item).split(",")
        ):
            raise SyntaxErr(f"Invalid --vrdeport argument '{item}'")
        else:
            v[VRDE_OPTS[key]] = "3389" if (VRDE_OPTS[key] == "ports" and item == "default") else item


def fix_uartmode_args(args: list[str]) -> list[str]:
    """``--uartmode1 file <path>`` takes two words; join them for parse_opts."""
    fixed: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--uartmode") and i + 1 < len(args) and args[i + 1] == "file":
            if i + 2 >= len(args):
                raise SyntaxErr(f"Missing argument to '{a}'")
            fixed += [a, "file " + args[i + 2]]
            i += 3
        else:
            fixed.append(a)
            i += 1
    return fixed


def cmd_storagectl(reg: Registry, args: list[str], out: list[str]) -> None:
    vm = require_vm_arg(args)
    m = reg.find(vm, "VBoxManageStorageController.cpp")
    opts = parse_opts(
        args[1:], {"--name", "--add", "--controller", "--portcount", "--bootable", "--hostiocache"}, {"--remove"}
    )
    if m["state"] in ONLINE:
        raise lock_error(m["name"], "VBoxManageStorageController.cpp", "LockMachine(a->session, LockType_Write)")
    name = opts.get("--name")
    if not name:
        raise SyntaxErr("Storage controller name not specified")
    if "--remove" in opts:
        m["controllers"] = [c for c in m["controllers"] if c["name"] != name]
    else:
        if any(c["name"] == name for c in m["controllers"]):
            raise VBoxError(
                f"Storage controller named '{name}' already exists",
                "VBOX_E_OBJECT_IN_USE",
                context="AddStorageController(Bstr(pszCtl).raw(), StorageBus_SATA, ctl.asOutParam())",
                source="VBoxManageStorageController.cpp",
                line=1120,
            )
        m["controllers"].append(
            {
                "name": name,
                "bus": opts.get("--add", "sata"),
                "type": opts.get("--controller", "IntelAhci"),
                "ports": int(opts.get("--portcount", 1)),
                "bootable": opts.get("--bootable", "on"),
            }
        )
    save_settings(m)


def register_medium(reg: Registry, path: str, mtype: str) -> str:
    for u, med in reg.media.items():
        if med["path"] == path:
            return u
    u = new_uuid()
    reg.media[u] = {"path": path, "type": mtype, "parent": None}
    return u


def create_diff(reg: Registry, m: dict[str, Any], parent: str) -> str:
    u = new_uuid()
    path = Path(m["folder"]) / "Snapshots" / f"{{{u}}}.vdi"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<<< vmctl VBoxManage simulator differencing image, parent {parent} >>>\n")
    reg.media[u] = {"path": str(path), "type": "normal", "parent": parent, "diff": True}
    return u


def delete_medium(reg: Registry, u: str) -> None:
    med = reg.media.pop(u, None)
    if med:
        with contextlib.suppress(OSError):
            os.unlink(med["path"])


def cmd_storageattach(reg: Registry, args: list[str], out: list[str]) -> None:
    vm = require_vm_arg(args)
    m = reg.find(vm, "VBoxManageStorageController.cpp")
    opts = parse_opts(
        args[1:], {"--storagectl", "--port", "--device", "--type", "--medium", "--mtype", "--nonrotational"}, set()
    )
    if m["state"] in ONLINE or m["state"] in ("saved", "aborted-saved"):
        raise lock_error(m["name"], "VBoxManageStorageController.cpp", "LockMachine(a->session, LockType_Write)")
    ctl = opts.get("--storagectl")
    if not any(c["name"] == ctl for c in m["controllers"]):
        raise VBoxError(
            f"Could not find a storage controller named '{ctl}'",
            "VBOX_E_OBJECT_NOT_FOUND",
            context="GetStorageControllerByName(Bstr(pszCtl).raw(), storageCtl.asOutParam())",
            source="VBoxManageStorageController.cpp",
            line=371,
        )
    key = f"{ctl}-{opts.get('--port', '0')}-{opts.get('--device', '0')}"
    medium = opts.get("--medium")
    if medium in (None, "none", "emptydrive"):
        old = m["attachments"].pop(key, None)
        if old and reg.media.get(old["medium"], {}).get("diff"):
            delete_medium(reg, old["medium"])
        save_settings(m)
        return
    path = os.path.abspath(medium)
    if not os.path.isfile(path):
        raise VBoxError(
            f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
            "VBOX_E_FILE_ERROR",
            "MediumWrap",
            "IMedium",
            "OpenMedium(Bstr(pszMedium).raw(), devTypeRequested, accessMode, fForceNewUuidOnOpen, "
            "pMedium2Mount.asOutParam())",
            "VBoxManageStorageController.cpp",
            line=1000,
        )
    mtype = opts.get("--mtype", "normal")
    u = register_medium(reg, path, mtype)
    base = reg.media[u]
    if mtype != base["type"]:
        users = [x for x in reg.machines.values() for a in x["attachments"].values() if a["medium"] == u]
        if users:
            raise VBoxError(
                f"Cannot change the type of medium '{path}' because it is attached to "
                f"virtual machine '{users[0]['name']}'",
                "VBOX_E_OBJECT_IN_USE",
                "MediumWrap",
                "IMedium",
                "COMSETTER(Type)(enmMediumType)",
                "VBoxManageStorageController.cpp",
                line=1120,
            )
        base["type"] = mtype
    if base["type"] in ("multiattach", "immutable"):
        attached = create_diff(reg, m, u)
    else:
        attached = u
    m["attachments"][key] = {"medium": attached}
    save_settings(m)


def cmd_sharedfolder(reg: Registry, args: list[str], out: list[str]) -> None:
    if not args or args[0] not in ("add", "remove"):
        raise SyntaxErr("Invalid parameter")
    vm = require_vm_arg(args[1:])
    m = reg.find(vm, "VBoxManageMisc.cpp")
    opts = parse_opts(args[2:], {"--name", "--hostpath"}, {"--readonly", "--automount", "--transient"})
    if m["state"] in ONLINE:
        raise lock_error(m["name"], "VBoxManageMisc.cpp", "LockMachine(a->session, LockType_Write)")
    if args[0] == "add":
        if not os.path.isdir(opts.get("--hostpath", "")):
            raise VBoxError(
                f"Shared folder path '{opts.get('--hostpath')}' does not exist on the host",
                "E_INVALIDARG",
                "SharedFolderWrap",
                "ISharedFolder",
                "CreateSharedFolder(...)",
            )
        m["shared"].append({"name": opts["--name"], "path": opts["--hostpath"], "writable": "--readonly" not in opts})
    else:
        m["shared"] = [s for s in m["shared"] if s["name"] != opts.get("--name")]
    save_settings(m)


def cmd_setextradata(reg: Registry, args: list[str], out: list[str]) -> None:
    if len(args) < 2:
        raise SyntaxErr("Not enough parameters")
    m = reg.find(args[0], "VBoxManageMisc.cpp")
    if len(args) == 2 or args[2] == "":
        m["extradata"].pop(args[1], None)
    else:
        m["extradata"][args[1]] = args[2]
    save_settings(m)


def cmd_getextradata(reg: Registry, args: list[str], out: list[str]) -> None:
    if len(args) < 1 or len(args) > 2:
        raise SyntaxErr("Incorrect number of parameters")
    m = reg.find(args[0], "VBoxManageMisc.cpp")
    if len(args) == 1 or args[1] == "enumerate":
        for k, v in sorted(m["extradata"].items()):
            out.append(f"Key: {k}, Value: {v}\n")
        return
    value = m["extradata"].get(args[1])
    out.append(f"Value: {value}\n" if value else "No value set!\n")


def cmd_startvm(reg: Registry, args: list[str], out: list[str], err: list[str]) -> int:
    vm = require_vm_arg(args)
    opts = parse_opts(args[1:], {"--type"}, set())
    if opts.get("--type", "gui") not in ("headless", "gui", "sdl", "separate"):
        raise SyntaxErr(f"Invalid session type '{opts['--type']}'")
    m = reg.find(vm, "VBoxManageMisc.cpp")
    ctx = "LaunchVMProcess(a->session, sessionType.raw(), ComSafeArrayAsInParam(aBstrEnv), progress.asOutParam())"
    if m["state"] in ONLINE:
        raise lock_error(m["name"], "VBoxManageMisc.cpp", ctx, launching=True)
    if not m["attachments"]:
        # A VM without a boot disk still starts in VirtualBox (it shows "No bootable medium").
        pass
    out.append(f'Waiting for VM "{m["name"]}" to power on...\n')
    restoring = m["state"] in ("saved", "aborted-saved") and m.get("saved_guest") is not None
    if restoring:
        m["guest"] = m["saved_guest"]
        m["saved_guest"] = None
        if m.get("state_file"):
            with contextlib.suppress(OSError):
                os.unlink(m["state_file"])
        m["state_file"] = None
    else:
        m["guest"] = new_guest(m["guest"], cable(m))
        serial(m, "VMCTL-GUEST READY")
    pid = launch_process(reg, m)
    m["runtime"] = {"pid": pid, "cap": m.get("cpucap", 100), "metrics": False, "started": now()}
    m["runtime"]["vrdeport"] = vrde_bind(reg, m)
    slow = take_fault(reg.root, "slow", "startvm", None)
    if slow:
        set_state(m, "restoring" if restoring else "starting")
        m["transition"] = {"until": now() + float(slow.get("seconds", 1.0)), "then": "running"}
    else:
        set_state(m, "running")
        thaw(m["guest"])
    out.append(f'VM "{m["name"]}" has been successfully started.\n')
    if take_fault(reg.root, "startvm_nonzero", "startvm", None):
        return 1
    return 0


def cmd_controlvm(reg: Registry, args: list[str], out: list[str], err: list[str]) -> None:
    if len(args) < 2:
        raise SyntaxErr("Not enough parameters.")
    m = reg.find(args[0], "VBoxManageControlVM.cpp")
    if m["state"] not in ONLINE:
        raise VBoxError(f"Machine '{args[0]}' is not currently running.")
    action = args[1]
    g = m["guest"]
    state = m["state"]
    if action == "pause":
        if state != "running":
            raise invalid_vm_state(state, "Pause()")
        freeze(g)
        os.kill(m["runtime"]["pid"], signal.SIGSTOP)
        set_state(m, "paused")
    elif action == "resume":
        if state != "paused":
            raise invalid_vm_state(state, "Resume()")
        os.kill(m["runtime"]["pid"], signal.SIGCONT)
        thaw(g)
        set_state(m, "running")
    elif action == "reset":
        if state not in ("running", "paused"):
            raise invalid_vm_state(state, "Reset()")
        m["guest"] = new_guest(g, g.get("link_up", True))
        if state == "running":
            thaw(m["guest"])
        serial(m, "VMCTL-GUEST READY")
    elif action == "poweroff":
        if state not in ("running", "paused", "gurumeditation", "stopping", "starting", "restoring"):
            raise invalid_vm_state(state, "PowerDown(progress.asOutParam())")
        err.append(PROGRESS)
        power_down(reg, m)
    elif action == "savestate":
        if state not in ("running", "paused"):
            # VBoxManageControlVM.cpp: RTMsgError("Machine in invalid state %d -- %s.", machineState,
            # machineStateToName(machineState, false)), no COM result code.
            raise PlainError(
                f"Machine in invalid state {STATE_NUMBERS.get(state, 0)} -- {STATE_LONG.get(state, state)}."
            )
        freeze(g)
        m["saved_guest"] = dict(g)
        snapdir = Path(m["folder"]) / "Snapshots"
        snapdir.mkdir(parents=True, exist_ok=True)
        sav = snapdir / (iso(now()).replace(":", "-") + ".sav")
        sav.write_text(json.dumps(g))
        err.append(PROGRESS)
        kill_process(reg, m)
        m["transition"] = None
        m["state_file"] = str(sav)
        set_state(m, "saved")
    elif action == "acpipowerbutton":
        if state != "running":
            raise invalid_vm_state(state, "PowerButton()")
        g["presses"] = g.get("presses", 0) + 1
        serial(m, "VMCTL-GUEST POWERBUTTON")
        if not guest_profile(reg.root, m["name"]).get("ignore_power_button") and g.get("shutdown_at") is None:
            g["shutdown_at"] = now() + SHUTDOWN_DELAY
    elif action.startswith("setlinkstate"):
        n = action[12:]
        if len(args) < 3:
            raise SyntaxErr(f"Missing argument to '{action}'.")
        if args[2] not in ("on", "off"):
            raise SyntaxErr(f"Invalid link state '{args[2]}'.")
        nic = m["nics"].get(n)
        if not nic or nic.get("type") == "none":
            raise VBoxError(f"Invalid NIC number '{n}'.")
        nic["cable"] = args[2] == "on"
        g["link_up"] = nic["cable"]
        serial(m, f"VMCTL-GUEST LINK {'up' if nic['cable'] else 'down'}")
        save_settings(m)
    elif action == "cpuexecutioncap":
        if len(args) < 3:
            raise SyntaxErr(f"Missing argument to '{action}'.")
        if not args[2].isdigit() or not 1 <= int(args[2]) <= 100:
            raise VBoxError(f"Invalid ExecutionCap number '{args[2]}'.", status=2)
        # Like the real controlvm, this changes the running session only (no saveSettings).
        m["runtime"]["cap"] = int(args[2])
        update_pidfile(reg, m)
    elif action == "screenshotpng":
        # VBoxManageControlVM.cpp (7.x): "screenshotpng <file> [display]": IDisplay's
        # GetScreenResolution and TakeScreenShotToArray(BitmapFormat_PNG), then RTFileOpen with
        # RTFILE_O_OPEN_CREATE | RTFILE_O_WRITE | RTFILE_O_TRUNCATE (an existing file is
        # replaced; links are followed) and RTMsgError("Failed to create file '%s' (%Rrc)").
        if len(args) < 3 or len(args) > 4:
            raise SyntaxErr("Incorrect number of parameters")
        if len(args) == 4 and args[3] != "0":
            raise VBoxError(
                "Invalid argument",
                "E_INVALIDARG",
                "DisplayWrap",
                "IDisplay",
                "GetScreenResolution(displayIdx, &width, &height, &bpp, &xOrigin, &yOrigin, &monitorStatus)",
                "VBoxManageControlVM.cpp",
            )
        png = screen_png(g)
        try:
            fd = os.open(args[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            code = {2: "VERR_PATH_NOT_FOUND", 13: "VERR_ACCESS_DENIED", 21: "VERR_IS_A_DIRECTORY"}.get(
                exc.errno or 0, "VERR_OPEN_FAILED"
            )
            raise PlainError(f"Failed to create file '{args[2]}' ({code})") from None
        with os.fdopen(fd, "wb") as f:
            f.write(png)
    else:
        raise SyntaxErr(f"Invalid parameter '{action}'")


SCREEN_WIDTH, SCREEN_HEIGHT = 720, 400  # the text mode showvminfo's VideoMode reports


def screen_png(g: dict[str, Any]) -> bytes:
    """The simulated guest's screen as a PNG (8-bit RGB, zlib): black, with a grey bar per
    boot and a bar that grows with the guest's counter, so the picture changes as the guest runs."""
    counter = int(guest_counter(g))
    rows = []
    for y in range(SCREEN_HEIGHT):
        length = 0
        if 8 <= y < 16:
            length = (counter * 8) % SCREEN_WIDTH
        elif 24 <= y < 104 and (y - 24) % 10 < 6 and (y - 24) // 10 < int(g.get("boots", 0)):
            length = 48
        rows.append(b"\x00" + b"\xaa\xaa\xaa" * length + b"\x00\x00\x00" * (SCREEN_WIDTH - length))
    raw = zlib.compress(b"".join(rows), 6)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", SCREEN_WIDTH, SCREEN_HEIGHT, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def guest_profile(root: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((root / "guests" / f"{name}.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def cmd_discardstate(reg: Registry, args: list[str], out: list[str]) -> None:
    vm = require_vm_arg(args)
    m = reg.find(vm, "VBoxManageMisc.cpp")
    if m["state"] not in ("saved", "aborted-saved"):
        raise VBoxError(
            "Cannot discard the saved state as the machine is not in the Saved state "
            f"(machine state: {state_name_long(m['state'])})",
            "VBOX_E_INVALID_VM_STATE",
            context="DiscardSavedState(true /* fDeleteFile */)",
            source="VBoxManageMisc.cpp",
            line=2217,
        )
    if m.get("state_file"):
        with contextlib.suppress(OSError):
            os.unlink(m["state_file"])
    m["state_file"] = None
    m["saved_guest"] = None
    set_state(m, "poweroff")


def find_snapshot(m: dict[str, Any], key: str) -> str:
    for u in m["snapshot_order"]:
        if u == key or m["snapshots"][u]["name"] == key:
            return str(u)
    raise VBoxError(
        f"Could not find a snapshot named '{key}'",
        "VBOX_E_OBJECT_NOT_FOUND",
        "SessionMachine",
        "IMachine",
        "FindSnapshot(Bstr(a->argv[2]).raw(), pSnapshot.asOutParam())",
        "VBoxManageSnapshot.cpp",
        line=513,
    )


def cmd_snapshot(reg: Registry, args: list[str], out: list[str], err: list[str]) -> None:
    if len(args) < 2:
        raise SyntaxErr("Not enough parameters")
    m = reg.find(args[0], "VBoxManageSnapshot.cpp")
    sub = args[1]
    state = m["state"]
    if sub == "list":
        if not m["snapshot_order"]:
            out.append("This machine does not have any snapshots\n")
            raise SystemExit(1)
        if "--machinereadable" in args[2:]:
            out.extend(snapshot_lines(m))
        else:
            for line in snapshot_lines(m):
                if line.startswith("SnapshotName"):
                    out.append("   Name: " + line.split("=", 1)[1].strip().strip('"') + "\n")
        return
    if sub == "take":
        if len(args) < 3:
            raise SyntaxErr("Missing snapshot name")
        opts = parse_opts(args[3:], {"--description"}, {"--live", "--pause"})
        if state not in ("poweroff", "aborted", "saved", "running", "paused"):
            raise VBoxError(
                "Cannot take a snapshot of the machine while it is changing the state "
                f"(machine state: {state_name_long(state)})",
                "VBOX_E_INVALID_VM_STATE",
                context="TakeSnapshot(name.raw(), desc.raw(), fPause, snapId.asOutParam(), progress.asOutParam())",
                source="VBoxManageSnapshot.cpp",
                line=434,
            )
        u = new_uuid()
        g = m["guest"]
        online = state in ("running", "paused", "saved")
        guest_copy = None
        if state in ("running", "paused"):
            was_running = state == "running"
            freeze(g)
            guest_copy = dict(g)
            if was_running:
                thaw(g)
        elif state == "saved":
            guest_copy = dict(m.get("saved_guest") or {})
        frozen = {k: a["medium"] for k, a in m["attachments"].items()}
        for a in m["attachments"].values():
            a["medium"] = create_diff(reg, m, a["medium"])
        m["snapshots"][u] = {
            "name": args[2],
            "description": opts.get("--description", ""),
            "parent": m.get("current_snapshot"),
            "online": online,
            "guest": guest_copy,
            "created": now(),
            "media": frozen,
            "cpucap": m.get("cpucap", 100),
        }
        m["snapshot_order"].append(u)
        m["current_snapshot"] = u
        err.append(PROGRESS)
        out.append(f"Snapshot taken. UUID: {u}\n")
        save_settings(m)
        return
    if sub in ("restore", "restorecurrent", "delete"):
        if sub == "restorecurrent":
            if len(args) > 2:
                raise SyntaxErr("Too many arguments")
            if not m.get("current_snapshot"):
                out.append("This machine does not have any snapshots\n")
                raise SystemExit(1)
            u = m["current_snapshot"]
        else:
            if len(args) != 3:
                raise SyntaxErr("Expecting snapshot name only")
            u = find_snapshot(m, args[2])
        s = m["snapshots"][u]
        out.append(f"{'Deleting' if sub == 'delete' else 'Restoring'} snapshot '{s['name']}' ({u})\n")
        if sub == "delete":
            if state not in ("poweroff", "aborted", "saved", "running", "paused"):
                raise invalid_vm_state(
                    state, "DeleteSnapshot(bstrSnapGuid.raw(), pProgress.asOutParam())", "VBoxManageSnapshot.cpp"
                )
            for c in m["snapshot_order"]:
                if m["snapshots"][c]["parent"] == u:
                    m["snapshots"][c]["parent"] = s["parent"]
            if m.get("current_snapshot") == u:
                m["current_snapshot"] = s["parent"]
            m["snapshot_order"].remove(u)
            del m["snapshots"][u]
            for med in s["media"].values():
                still = any(med in o["media"].values() for o in m["snapshots"].values())
                if not still and reg.media.get(med, {}).get("diff"):
                    for other in reg.media.values():
                        if other.get("parent") == med:
                            other["parent"] = reg.media[med]["parent"]
                    delete_medium(reg, med)
            err.append(PROGRESS)
            save_settings(m)
            return
        if state in ONLINE:
            raise VBoxError(
                f"Cannot delete the current state of the running machine (machine state: {state_name_long(state)})",
                "VBOX_E_INVALID_VM_STATE",
                "SessionMachine",
                "IMachine",
                "RestoreSnapshot(pSnapshot, pProgress.asOutParam())",
                "VBoxManageSnapshot.cpp",
                line=584,
            )
        for k, a in list(m["attachments"].items()):
            current = a["medium"]
            referenced = any(current in o["media"].values() for o in m["snapshots"].values())
            if not referenced and reg.media.get(current, {}).get("diff"):
                delete_medium(reg, current)
            a["medium"] = create_diff(reg, m, s["media"].get(k, current))
        if m.get("state_file"):
            with contextlib.suppress(OSError):
                os.unlink(m["state_file"])
        m["state_file"] = None
        m["saved_guest"] = None
        m["cpucap"] = s.get("cpucap", m.get("cpucap", 100))
        if s["online"] and s["guest"] is not None:
            m["saved_guest"] = dict(s["guest"])
            snapdir = Path(m["folder"]) / "Snapshots"
            sav = snapdir / (iso(now()).replace(":", "-") + ".sav")
            sav.write_text(json.dumps(s["guest"]))
            m["state_file"] = str(sav)
            set_state(m, "saved")
        else:
            set_state(m, "poweroff")
        m["current_snapshot"] = u
        err.append(PROGRESS)
        save_settings(m)
        return
    raise SyntaxErr(f"Invalid parameter '{sub}'")


def cmd_unregistervm(reg: Registry, args: list[str], out: list[str], err: list[str]) -> None:
    vm = require_vm_arg(args, "VM name required")
    opts = parse_opts(args[1:], set(), {"--delete", "--delete-all"})
    m = reg.find(vm, "VBoxManageMisc.cpp")
    if m["state"] in ONLINE:
        raise VBoxError(
            f"Cannot unregister the machine '{m['name']}' while it is locked",
            "VBOX_E_INVALID_OBJECT_STATE",
            context="Unregister(CleanupMode_DetachAllReturnHardDisksOnly, ComSafeArrayAsOutParam(aMedia))",
            line=196,
        )
    del reg.machines[m["uuid"]]
    if "--delete" in opts or "--delete-all" in opts:
        doomed: set[str] = set()
        for a in m["attachments"].values():
            doomed.add(a["medium"])
        for s in m["snapshots"].values():
            doomed.update(s["media"].values())
        # Diff chains created for this machine go too; a multiattach/immutable base does not.
        for u, med in list(reg.media.items()):
            if med.get("diff") and Path(med["path"]).is_relative_to(m["folder"]):
                doomed.add(u)
        for u in doomed:
            found = reg.media.get(u)
            if found and found["type"] in ("multiattach", "immutable") and not found.get("diff"):
                continue
            delete_medium(reg, u)
        folder = Path(m["folder"])
        with contextlib.suppress(OSError):
            os.unlink(m["cfg_file"])
        if m.get("state_file"):
            with contextlib.suppress(OSError):
                os.unlink(m["state_file"])
        for sub in ("Logs", "Snapshots"):
            d = folder / sub
            if d.is_dir():
                for f in d.iterdir():
                    if f.suffix in (".sav", ".vdi", ".log") or f.name.startswith("VBox.log") or f.name.endswith(".png"):
                        with contextlib.suppress(OSError):
                            f.unlink()
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()
        err.append(PROGRESS)


OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"


def _ovf_read(source: str) -> tuple[bytes, dict[str, bytes] | None]:
    """The descriptor and, for an OVA, its other members (the simulator reads what vmctl wrote)."""
    import tarfile

    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
        ovf = next(n for n in files if n.endswith(".ovf"))
        return files.pop(ovf), files
    return Path(source).read_bytes(), None


def cmd_import(reg: Registry, args: list[str], out: list[str], err: list[str]) -> None:
    """``VBoxManage import``: VBoxManageAppliance.cpp prints the appliance it read ("Interpreting
    ...", the disks, then each virtual system's numbered settings with their ``--vsys 0 ...``
    hints), then imports it: the VM is created and registered in ``<basefolder>/<name>/`` and each
    disk is copied there under its own file name (VirtualBox converts it; the simulator copies),
    attached to a controller of the appliance. ``--dry-run`` only prints."""
    import xml.etree.ElementTree as ET

    if not args or args[0].startswith("-"):
        raise SyntaxErr('Not enough arguments for "import" command.')
    source = os.path.abspath(args[0])
    opts = parse_opts(
        args[1:],
        {"--vsys", "--vmname", "--basefolder", "--memory", "--cpus", "--ostype", "--options", "--settingsfile",
         "--group", "--description", "--eula"},
        {"--dry-run", "-n"},
    )  # fmt: skip
    if not os.path.isfile(source):
        raise VBoxError(
            f"Appliance file must have .ovf or .ova extension, or does not exist: '{source}'",
            "VBOX_E_FILE_ERROR",
            "ApplianceWrap",
            "IAppliance",
            "Read(Bstr(pszAbsFilePath).raw(), progressRead.asOutParam())",
            "VBoxManageAppliance.cpp",
            line=360,
        )
    data, members = _ovf_read(source)
    root = ET.fromstring(data)  # noqa: S314 - the simulator reads what the tests wrote
    q = lambda tag: f"{{{OVF_NS}}}{tag}"  # noqa: E731
    a = lambda e, k: e.get(q(k))  # noqa: E731
    hrefs = {a(f, "id"): a(f, "href") for f in root.iter(q("File"))}
    disks = [(a(d, "diskId"), a(d, "capacity"), a(d, "format"), hrefs[a(d, "fileRef")]) for d in root.iter(q("Disk"))]
    system = next(root.iter(q("VirtualSystem")))
    memory, cpus, nics = 128, 1, 0
    for item in system.iter(q("Item")):
        kind = item.findtext(f"{{{RASD_NS}}}ResourceType")
        qty = item.findtext(f"{{{RASD_NS}}}VirtualQuantity")
        if kind == "3":
            cpus = int(qty or 1)
        elif kind == "4":
            memory = int(qty or 128)
        elif kind == "10":
            nics += 1
    name = opts.get("--vmname") or a(system, "id")
    memory = int(opts.get("--memory", memory))
    cpus = int(opts.get("--cpus", cpus))
    base = Path(opts.get("--basefolder") or Path.home() / "VirtualBox VMs")
    folder = base / name
    cfg = folder / f"{name}.vbox"
    out.append(f"Interpreting {source}...\nOK.\nDisks:\n")
    for did, capacity, fmt, href in disks:
        out.append(f"  {did}\t{capacity}\t-1\t{fmt}\t{href}\t-1\t-1\t\n")
    out.append("\nVirtual system 0:\n")
    lines = [
        ('Suggested OS type: "Other"',
         '(change with "--vsys 0 --ostype <type>"; use "list ostypes" to list all possible values)'),
        (f'Suggested VM name "{name}"', '(change with "--vsys 0 --vmname <name>")'),
        (f'Suggested VM settings file name "{cfg}"', '(change with "--vsys 0 --settingsfile <filename>")'),
        (f'Suggested VM base folder "{base}"', '(change with "--vsys 0 --basefolder <path>")'),
        (f"Number of CPUs: {cpus}", '(change with "--vsys 0 --cpus <n>")'),
        (f"Guest memory: {memory} MB", '(change with "--vsys 0 --memory <MB>")'),
    ]  # fmt: skip
    lines += [("Network adapter: orig NAT, config 3, extra slot=0;type=NAT", "")] * min(nics, 1)
    lines.append(("SCSI controller, type LsiLogic", '(disable with "--vsys 0 --unit {n} --ignore")'))
    ctl_unit = len(lines) - 1
    for _did, _cap, _fmt, href in disks:
        lines.append(
            (f"Hard disk image: source image={href}, target path={folder / Path(href).name}, controller={ctl_unit};"
             f"channel={len(lines) - ctl_unit - 1}",
             '(change target path with "--vsys 0 --unit {n} --disk path";\n'
             '    disable with "--vsys 0 --unit {n} --ignore")'),
        )  # fmt: skip
    for n, (text, hint) in enumerate(lines):
        out.append(f"{n:2d}: {text}\n" + (f"    {hint.format(n=n)}\n" if hint else ""))
    if "--dry-run" in opts or "-n" in opts:
        return
    if cfg.exists() or any(x["name"] == name for x in reg.machines.values()):
        raise VBoxError(
            f"Machine settings file '{cfg}' already exists",
            "VBOX_E_FILE_ERROR",
            context="ImportMachines(ComSafeArrayAsInParam(options), progress.asOutParam())",
            source="VBoxManageAppliance.cpp",
            line=1210,
        )
    cmd_createvm(reg, ["--name", name, "--basefolder", str(base), "--register"], [])
    m = reg.find(name, "VBoxManageAppliance.cpp")
    m["memory"], m["cpus"] = memory, cpus
    if not nics:
        m["nics"] = {}
    m["controllers"].append(
        {"name": "SCSI Controller", "bus": "scsi", "type": "LsiLogic", "ports": 16, "bootable": "on"}
    )
    for port, (_did, _cap, _fmt, href) in enumerate(disks):
        dest = folder / Path(href).name
        if members is not None:
            dest.write_bytes(members[href])
        else:
            shutil.copyfile(Path(source).parent / href, dest)
        m["attachments"][f"SCSI Controller-{port}-0"] = {"medium": register_medium(reg, str(dest), "normal")}
    save_settings(m)
    err.append(PROGRESS)
    out.append("Successfully imported the appliance.\n")


METRICS = ("CPU/Load/User", "CPU/Load/Kernel", "RAM/Usage/Used", "Net/Rate/Rx", "Net/Rate/Tx")


def cmd_metrics(reg: Registry, args: list[str], out: list[str]) -> None:
    if not args or args[0] not in ("setup", "query", "list", "enable", "disable"):
        raise SyntaxErr("Invalid parameter")
    sub = args[0]
    rest = list(args[1:])
    while rest and rest[0] in ("--period", "--samples", "--list"):
        rest = rest[2:] if rest[0] != "--list" else rest[1:]
    objects = [rest[0]] if rest and rest[0] not in ("*",) else []
    targets: list[dict[str, Any]] = []
    if objects and objects[0] != "host":
        targets = [reg.find(objects[0], "VBoxManageMetrics.cpp")]
    elif not objects:
        targets = list(reg.machines.values())
    if sub == "setup":
        for m in targets:
            if m.get("runtime"):
                m["runtime"]["metrics"] = True
        return
    if sub != "query":
        return
    out.append("Object          Metric                                   Values\n")
    out.append(
        "--------------- ---------------------------------------- --------------------------------------------\n"
    )
    for m in targets:
        rt = m.get("runtime")
        if not rt or not rt.get("metrics") or not pid_alive(rt.get("pid")):
            continue
        user, kernel, rss = proc_stat(rt["pid"])
        elapsed = max(0.001, now() - rt["started"])
        values = {
            "CPU/Load/User": f"{min(100.0, 100.0 * user / elapsed):.2f}%",
            "CPU/Load/Kernel": f"{min(100.0, 100.0 * kernel / elapsed):.2f}%",
            "RAM/Usage/Used": f"{max(rss // 1024, int(m['memory']) * 1024)} kB",
            "Net/Rate/Rx": "0 B/s",
            "Net/Rate/Tx": "0 B/s",
        }
        for metric in METRICS:
            value = values[metric]
            out.append(f"{m['name']:<15} {metric:<40} {value}\n")
            for agg in (":avg", ":min", ":max"):
                out.append(f"{m['name']:<15} {metric + agg:<40} {value}\n")


def proc_stat(pid: int) -> tuple[float, float, int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[11]) / ticks, int(fields[12]) / ticks, int(fields[21]) * page
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0


# ---------------------------------------------------------------------------------------------
# For tests: looking inside the simulated guest
# ---------------------------------------------------------------------------------------------


def guest_view(root: Path | str, name: str) -> dict[str, Any] | None:
    """The guest of machine ``name`` as tests see it (None if no such machine)."""
    with locked_registry(Path(root)) as reg:
        for m in reg.machines.values():
            if m["name"] == name:
                g = m["guest"]
                running = m["state"] == "running"
                return {
                    "state": m["state"],
                    "counter": guest_counter(g),
                    "presses": g.get("presses", 0),
                    "boots": g.get("boots", 0),
                    "link_up": g.get("link_up", True) if cable_exists(m) else None,
                    "ready": running and g.get("running_since") is not None,
                    "pid": (m.get("runtime") or {}).get("pid"),
                    "folder": m["folder"],
                    "cpucap": (m.get("runtime") or {}).get("cap", m.get("cpucap", 100)),
                }
    return None


def cable_exists(m: dict[str, Any]) -> bool:
    nic = m.get("nics", {}).get("1")
    return bool(nic and nic.get("type") not in (None, "none", "null"))


def set_guest_profile(root: Path | str, name: str, **profile: Any) -> None:
    """Write ``guests/<name>.json`` (e.g. ``ignore_power_button=True``)."""
    d = Path(root) / "guests"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(profile))


def vm_processes(root: Path | str) -> list[int]:
    """Pids of live simulated VM processes started from this home."""
    found = []
    marker = str(Path(root) / "pids")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "--startvm" in cmd and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def inject_inaccessible(root: Path | str, name: str, value: bool = True) -> None:
    with locked_registry(Path(root)) as reg:
        for m in reg.machines.values():
            if m["name"] == name:
                m["inaccessible"] = value


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

SIMPLE = {
    "list": cmd_list,
    "showvminfo": cmd_showvminfo,
    "createvm": cmd_createvm,
    "modifyvm": cmd_modifyvm,
    "storagectl": cmd_storagectl,
    "storageattach": cmd_storageattach,
    "sharedfolder": cmd_sharedfolder,
    "setextradata": cmd_setextradata,
    "getextradata": cmd_getextradata,
    "discardstate": cmd_discardstate,
    "metrics": cmd_metrics,
}
WITH_ERR = {
    "controlvm": cmd_controlvm,
    "snapshot": cmd_snapshot,
    "unregistervm": cmd_unregistervm,
    "import": cmd_import,
}


#: What the VBox.sh wrapper prints on stdout before every command when vboxdrv is not loaded
#: (kubernetes/minikube#2522, VirtualBox 5.2.6 on Arch Linux; the same text in 6.0.x and 7.0.x).
NO_VBOXDRV_WARNING = (
    "WARNING: The vboxdrv kernel module is not loaded. Either there is no module\n"
    "         available for the current kernel ({release}) or it failed to\n"
    "         load. Please recompile the kernel module and install it by\n"
    "\n"
    "           sudo /sbin/vboxconfig\n"
    "\n"
    "         You will not be able to start VMs until this problem is fixed.\n"
)


def charset_is_utf8(env: Any) -> bool:
    """Whether the C library's LC_CTYPE, chosen as setlocale(LC_ALL, "") does, is UTF-8."""
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = env.get(var)
        if value:
            return ".utf8" in value.lower().replace("-", "")
    return False


def emit(stream: Any, text: str, ascii_only: bool) -> None:
    if ascii_only:
        text = "".join(ch if ord(ch) < 128 else "?" for ch in text)
    stream.buffer.write(text.encode("utf-8", errors="surrogateescape"))
    stream.flush()


def no_vboxdrv_start(reg: Registry, args: list[str]) -> VBoxError:
    """startvm without the kernel module: the VM process dies at once (VBoxManageMisc.cpp)."""
    m = reg.find(require_vm_arg(args), "VBoxManageMisc.cpp")
    return VBoxError(
        f"The virtual machine '{m['name']}' has terminated unexpectedly during startup with exit code 1 (0x1).  "
        f"More details may be available in '{Path(m['folder']) / 'Logs' / 'VBoxHardening.log'}'",
        "NS_ERROR_FAILURE",
        "MachineWrap",
        "IMachine",
    )


def main(argv: list[str]) -> int:
    args = list(argv)
    while args and args[0] in ("-q", "--nologo"):
        args.pop(0)
    # Under a locale whose charset is not UTF-8 (LANG=C, LC_ALL=C), VirtualBox 7.0.x prints
    # nothing at all (hashicorp/vagrant#13145, GNS3/gns3-server#2266): "silent", the default. With
    # VBOXSIM_C_LOCALE=ascii it behaves as 7.1 does instead (VirtualBox/virtualbox#371): every
    # non-ASCII character printed becomes "?", and a non-ASCII argument cannot be converted
    # (hashicorp/vagrant#13033: "VBoxManage: fatal error: RTR3Init: VERR_NO_TRANSLATION").
    c_locale = None if charset_is_utf8(os.environ) else os.environ.get("VBOXSIM_C_LOCALE", "silent")
    prefix = ""
    if os.environ.get("VBOXSIM_NO_VBOXDRV"):
        prefix = NO_VBOXDRV_WARNING.format(release=os.uname().release)
    if not args:
        emit(
            sys.stdout,
            prefix + f"Oracle VirtualBox Command Line Management Interface Version {VERSION.split('r')[0]}\n",
            False,
        )
        return 2
    if args[0] in ("--version", "-v", "-V"):
        emit(sys.stdout, prefix + VERSION + "\n", False)
        return 0
    if c_locale == "silent":
        return 0
    if c_locale == "ascii" and any(not a.isascii() for a in args):
        emit(sys.stderr, "VBoxManage: fatal error: RTR3Init: VERR_NO_TRANSLATION\n", False)
        return 1
    verb, rest = args[0], args[1:]
    if verb == "modifyvm":
        rest = fix_uartmode_args(rest)
    out: list[str] = []
    err: list[str] = []
    status = 0
    root = home()
    sub = (
        rest[1]
        if verb in ("controlvm", "snapshot") and len(rest) > 1
        else (rest[0] if verb == "metrics" and rest else None)
    )
    error: VBoxError | None = None
    exit0 = None
    with locked_registry(root) as reg:
        reg.data["calls"] = reg.data.get("calls", 0) + 1
        try:
            if verb not in SIMPLE and verb not in WITH_ERR and verb != "startvm":
                raise SyntaxErr(f"Invalid command '{verb}'")
            if take_fault(root, "lock", verb, sub):
                name = rest[0] if rest else "?"
                with contextlib.suppress(VBoxError):
                    name = reg.find(name)["name"]
                raise lock_error(name, "VBoxManageMisc.cpp", "LockMachine(a->session, LockType_Shared)", launching=True)
            failure = take_fault(root, "fail", verb, sub)
            if failure:
                raise VBoxError(
                    failure.get("text", "The simulator was told to fail this command"),
                    failure.get("code", "VBOX_E_VM_ERROR"),
                    status=int(failure.get("exit", 1)),
                    context="simulated failure",
                )
            try:
                if verb == "startvm" and prefix:
                    raise no_vboxdrv_start(reg, rest)
                if verb == "startvm":
                    status = cmd_startvm(reg, rest, out, err)
                elif verb in WITH_ERR:
                    WITH_ERR[verb](reg, rest, out, err)
                else:
                    SIMPLE[verb](reg, rest, out)
            except SystemExit as exc:
                status = int(exc.code or 0)
        except VBoxError as exc:
            error = exc
            exit0 = take_fault(root, "exit0", verb, sub)
    ascii_only = c_locale == "ascii"
    emit(sys.stdout, prefix + "".join(out), ascii_only)
    emit(sys.stderr, "".join(err) + (error.render() if error is not None else ""), ascii_only)
    if error is not None:
        return 0 if exit0 else error.status
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
