"""The vmrun simulator reproduces what the vmware backend relies on from the real vmrun.

These pin the documented formats and VIX error texts (cited in the simulator's docstring), so a
change to the simulator that drifts from the real tool fails here, not silently in the backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from tests.contract.harness import wait_until
from tests.contract.harness_vmware import fake_vmdk, load_simulator, make_vmrun, realworld_sample, vmx_processes

NOT_SUPPORTED = "Error: The operation is not supported\n"  # -T player snapshot, Orange-Cyberdefense/GOAD#108


@dataclass
class Host:
    vmrun: Path
    home: Path
    root: Path
    sim: ModuleType

    def run(self, *args: str, product: str = "ws") -> tuple[int, str]:
        proc = subprocess.run(
            [str(self.vmrun), "-T", product, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.stderr == ""
        return proc.returncode, proc.stdout

    def ok(self, *args: str, product: str = "ws") -> str:
        status, out = self.run(*args, product=product)
        assert status == 0, out
        return out

    def make_vm(self, name: str, *, nic: bool = False) -> Path:
        directory = self.root / name
        directory.mkdir()
        disk = fake_vmdk(self.root / f"{name}-disk.vmdk")
        lines = ['.encoding = "UTF-8"', f'displayName = "{name}"', f'scsi0:0.fileName = "{disk}"']
        if nic:
            lines += ['ethernet0.present = "TRUE"', 'ethernet0.startConnected = "TRUE"']
        vmx = directory / f"{name}.vmx"
        vmx.write_text("\n".join(lines) + "\n")
        return vmx

    def guest(self, vmx: Path) -> dict[str, Any]:
        view: dict[str, Any] = self.sim.guest_view(self.home, vmx)
        return view


def vmx_setting(vmx: Path, key: str) -> str | None:
    for line in vmx.read_text().splitlines():
        k, _, v = line.partition(" = ")
        if k.lower() == key.lower():
            return v.strip('"')
    return None


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(make_vmrun(tmp_path / "bin", tmp_path / "home"), tmp_path / "home", tmp_path / "vms", load_simulator())
    h.root.mkdir()
    try:
        yield h
    finally:
        for proc in vmx_processes(str(tmp_path)):
            proc.kill()


def test_list_prints_a_count_then_one_vmx_path_a_line(host: Host) -> None:
    assert host.run("list") == (0, "Total running VMs: 0\n")
    a, b = host.make_vm("a"), host.make_vm("b")
    host.ok("start", str(a), "nogui")
    host.ok("start", str(b), "nogui")
    assert host.ok("list") == f"Total running VMs: 2\n{a}\n{b}\n"
    host.ok("pause", str(a))
    assert str(a) in host.ok("list"), "a paused VM is still listed"
    host.ok("stop", str(a), "hard")
    host.ok("stop", str(b), "hard")
    assert host.ok("list") == "Total running VMs: 0\n"


def test_errors_are_error_lines_on_stdout_with_status_255(host: Host) -> None:
    vmx = host.make_vm("a")
    assert host.run("stop", str(vmx), "hard") == (255, f"Error: The virtual machine is not powered on: {vmx}\n")
    missing = str(host.root / "nope" / "nope.vmx")
    assert host.run("start", missing) == (
        255,
        f"Error: Cannot open VM: {missing}, The virtual machine cannot be found\n",
    )
    assert host.run("start", str(host.root / "a")) == (
        255,
        f"Error: Cannot open VM: {host.root / 'a'}, unknown file suffix\n",
    )
    assert host.run("stop", str(vmx), "gently") == (255, "Error: One of the parameters was invalid\n")
    status, out = host.run("frobnicate", str(vmx))
    assert status == 255 and out.startswith("Error: ")
    status, out = host.run("-x")
    assert status == 255 and out.startswith("Invalid argument: -x\nvmrun version")
    host.ok("start", str(vmx))
    assert host.run("start", str(vmx)) == (
        255,
        "Error: The virtual machine should not be powered on. It appears to be running already.\n",
    )
    host.ok("stop", str(vmx), "hard")


def test_player_refuses_snapshots_pause_and_clone(host: Host) -> None:
    vmx = host.make_vm("a")
    host.ok("start", str(vmx), "nogui", product="player")
    for args in (
        ("pause", str(vmx)),
        ("unpause", str(vmx)),
        ("snapshot", str(vmx), "s"),
        ("listSnapshots", str(vmx)),
        ("revertToSnapshot", str(vmx), "s"),
        ("deleteSnapshot", str(vmx), "s"),
        ("clone", str(vmx), str(host.root / "c" / "c.vmx"), "linked", "-snapshot=s"),
    ):
        assert host.run(*args, product="player") == (255, NOT_SUPPORTED), args
    host.ok("suspend", str(vmx), "hard", product="player")
    host.ok("start", str(vmx), product="player")
    host.ok("stop", str(vmx), "hard", product="player")


def test_the_vmx_process_and_a_crash(host: Host) -> None:
    vmx = host.make_vm("a")
    host.ok("start", str(vmx), "nogui")
    assert vmx_setting(vmx, "cleanShutdown") == "FALSE"
    assert (vmx.parent / "a.vmx.lck").is_dir()
    (proc,) = vmx_processes(str(vmx))
    assert os.path.basename(proc.cmdline()[0]) == "vmware-vmx" and proc.cmdline()[-1] == str(vmx)
    assert host.guest(vmx)["pid"] == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    wait_until(lambda: host.ok("list") == "Total running VMs: 0\n", 10, "the dead VM to leave the list")
    assert vmx_setting(vmx, "cleanShutdown") == "FALSE", "a crashed VMX leaves cleanShutdown FALSE"
    host.ok("start", str(vmx))
    assert host.guest(vmx)["boots"] == 2
    host.ok("stop", str(vmx), "hard")
    assert vmx_setting(vmx, "cleanShutdown") == "TRUE" and vmx_setting(vmx, "softPowerOff") == "FALSE"
    assert "VMX exit (0)." in (vmx.parent / "vmware.log").read_text()
    assert not vmx_processes(str(vmx))


def test_suspend_writes_vmss_and_stop_cannot_discard_it(host: Host) -> None:
    vmx = host.make_vm("a")
    host.ok("start", str(vmx))
    wait_until(lambda: host.guest(vmx)["counter"] >= 2, 10, "guest time to pass")
    host.ok("suspend", str(vmx), "hard")
    assert vmx_setting(vmx, "checkpoint.vmState") == "a.vmss" and (vmx.parent / "a.vmss").is_file()
    assert not vmx_processes(str(vmx))
    frozen = host.guest(vmx)["counter"]
    assert isinstance(frozen, int) and frozen >= 2
    assert host.run("stop", str(vmx), "hard") == (255, f"Error: The virtual machine is not powered on: {vmx}\n")
    assert (vmx.parent / "a.vmss").is_file(), "stop leaves a suspended VM suspended (VIX VMPowerOff)"
    host.ok("start", str(vmx))
    view = host.guest(vmx)
    assert view["boots"] == 1 and isinstance(view["counter"], int) and view["counter"] >= frozen
    assert vmx_setting(vmx, "checkpoint.vmState") is None and not (vmx.parent / "a.vmss").exists()
    host.ok("stop", str(vmx), "hard")


def test_snapshots_list_in_order_and_revert_to_their_power_state(host: Host) -> None:
    vmx = host.make_vm("a")
    assert host.ok("listSnapshots", str(vmx)) == "Total snapshots: 0\n"
    host.ok("snapshot", str(vmx), "cold")
    host.ok("start", str(vmx))
    wait_until(lambda: host.guest(vmx)["counter"] >= 4, 10, "guest time to pass")
    host.ok("snapshot", str(vmx), "warm")
    assert host.ok("listSnapshots", str(vmx)) == "Total snapshots: 2\ncold\nwarm\n"
    assert host.ok("listSnapshots", str(vmx), "showTree") == "Total snapshots: 2\ncold\n\twarm\n"
    host.ok("revertToSnapshot", str(vmx), "cold")
    assert host.ok("list") == "Total running VMs: 0\n", "a powered-off snapshot reverts to powered off"
    host.ok("revertToSnapshot", str(vmx), "warm")
    assert host.ok("list") == f"Total running VMs: 1\n{vmx}\n", "a powered-on snapshot reverts to powered on"
    counter = host.guest(vmx)["counter"]
    assert isinstance(counter, int) and 4 <= counter < 20
    assert host.run("revertToSnapshot", str(vmx), "nope") == (255, "Error: A file by that name does not exist\n")
    host.ok("snapshot", str(vmx), "warm")
    assert host.run("deleteSnapshot", str(vmx), "warm") == (
        255,
        "Error: The name does not uniquely identify one snapshot\n",
    )
    host.ok("deleteSnapshot", str(vmx), "cold")
    assert host.ok("listSnapshots", str(vmx)) == "Total snapshots: 2\nwarm\nwarm\n"
    host.ok("stop", str(vmx), "hard")


def test_soft_operations_need_vmware_tools(host: Host) -> None:
    vmx = host.make_vm("a")
    host.sim.set_profile(host.home, "a", tools=False)
    host.ok("start", str(vmx))
    tools_error = f"Error: The VMware Tools are not running in the virtual machine: {vmx}\n"
    assert host.run("stop", str(vmx), "soft") == (255, tools_error)
    assert host.run("reset", str(vmx), "soft") == (255, tools_error)
    assert host.ok("checkToolsState", str(vmx)) == "installed\n"
    host.sim.set_profile(host.home, "a")
    wait_until(lambda: host.guest(vmx)["ready"], 10, "the guest to boot")
    assert host.ok("checkToolsState", str(vmx)) == "running\n"
    host.ok("reset", str(vmx), "soft")
    assert host.guest(vmx)["boots"] == 2 and host.guest(vmx)["presses"] == 1
    wait_until(lambda: host.guest(vmx)["ready"], 10, "the guest to boot again")
    host.ok("stop", str(vmx), "soft")
    assert host.ok("list") == "Total running VMs: 0\n"
    assert vmx_setting(vmx, "softPowerOff") == "TRUE"


def test_named_device_toggles_the_guest_link(host: Host) -> None:
    vmx = host.make_vm("a", nic=True)
    assert host.run("disconnectNamedDevice", str(vmx), "ethernet0") == (
        255,
        f"Error: The virtual machine is not powered on: {vmx}\n",
    )
    host.ok("start", str(vmx))
    assert host.guest(vmx)["link_up"] is True
    host.ok("disconnectNamedDevice", str(vmx), "ethernet0")
    assert host.guest(vmx)["link_up"] is False
    assert host.run("connectNamedDevice", str(vmx), "ethernet7") == (255, "Error: One of the parameters was invalid\n")
    host.ok("connectNamedDevice", str(vmx), "ethernet0")
    assert host.guest(vmx)["link_up"] is True
    host.ok("stop", str(vmx), "hard")


def test_linked_clone_names_its_parent_disk_and_copies_nothing(host: Host) -> None:
    vmx = host.make_vm("base")
    dest = host.root / "c1" / "c1.vmx"
    assert host.run("clone", str(vmx), str(dest), "linked") == (255, "Error: One of the parameters was invalid\n")
    assert host.run("clone", str(vmx), str(dest), "linked", "-snapshot=s") == (
        255,
        "Error: A file by that name does not exist\n",
    )
    host.ok("snapshot", str(vmx), "s")
    host.ok("clone", str(vmx), str(dest), "linked", "-snapshot=s", "-cloneName=c1")
    assert vmx_setting(dest, "displayName") == "c1"
    delta = dest.parent / (vmx_setting(dest, "scsi0:0.fileName") or "")
    assert f'parentFileNameHint="{host.root / "base-disk.vmdk"}"' in delta.read_text()
    assert host.run("clone", str(vmx), str(dest), "linked", "-snapshot=s") == (255, "Error: The file already exists\n")


def test_a_vmx_process_uses_cpu_only_while_the_guest_runs(host: Host) -> None:
    vmx = host.make_vm("a")
    host.ok("start", str(vmx))
    (proc,) = vmx_processes(str(vmx))

    def cpu() -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    start = cpu()
    wait_until(lambda: cpu() > start + 0.02, 10, "the running VMX to use CPU")
    host.ok("pause", str(vmx))
    paused = cpu()
    stopped_counter = host.guest(vmx)["counter"]
    time.sleep(1.0)  # a measurement window, not synchronisation: running, the VMX uses ~0.1 s a second
    assert cpu() - paused < 0.03
    assert proc.status() == psutil.STATUS_SLEEPING
    assert host.guest(vmx)["counter"] == stopped_counter
    host.ok("stop", str(vmx), "hard")


# -- the real forms (captures under tests/realworld/vmware/) ----------------------------------
def test_check_tools_state_of_a_powered_off_vm_is_unknown_with_status_minus_2(host: Host) -> None:
    vmx = host.make_vm("a")
    # Workstation/Fusion print "unknown" and exit -2 (254 on POSIX): GNS3/gns3-server#1901.
    assert host.run("checkToolsState", str(vmx)) == (254, "unknown\n")
    host.ok("start", str(vmx))
    wait_until(lambda: host.guest(vmx)["ready"], 10, "the guest to boot")
    assert host.run("checkToolsState", str(vmx)) == (0, "running\n")
    host.ok("stop", str(vmx), "hard")


def test_get_guest_ip_address_as_vmrun_prints_it(host: Host) -> None:
    vmx = host.make_vm("a", nic=True)
    assert host.run("getGuestIPAddress", str(vmx)) == (255, "Error: The virtual machine is not powered on\n")
    host.sim.set_profile(host.home, "a", tools=False)
    host.ok("start", str(vmx))
    tools_error = f"Error: The VMware Tools are not running in the virtual machine: {vmx}\n"
    assert host.run("getGuestIPAddress", str(vmx)) == (255, tools_error)
    host.sim.set_profile(host.home, "a")
    status, out = host.run("getGuestIPAddress", str(vmx), "-wait")
    assert status == 0 and out.count("\n") == 1 and out.startswith("192.168.")
    assert host.ok("getGuestIPAddress", str(vmx)) == out
    assert host.run("getGuestIPAddress", str(vmx), "-later") == (255, "Error: One of the parameters was invalid\n")
    host.ok("stop", str(vmx), "hard")


def test_unquoted_values_and_comments_are_read_as_vmware_reads_them(host: Host) -> None:
    vmx = host.make_vm("a")
    with vmx.open("a") as f:
        f.write("# the NIC, as a user would type it\nethernet0.present = TRUE   # on\nethernet0.startConnected=FALSE\n")
    host.ok("start", str(vmx))
    assert host.guest(vmx)["link_up"] is False, "ethernet0.startConnected=FALSE was read"
    host.ok("connectNamedDevice", str(vmx), "ethernet0")  # ethernet0.present = TRUE was read
    assert host.guest(vmx)["link_up"] is True
    host.ok("stop", str(vmx), "hard")
    text = vmx.read_text()
    assert "# the NIC, as a user would type it\n" in text and "ethernet0.present = TRUE   # on\n" in text
    assert text.count("cleanShutdown") == 1 and 'cleanShutdown = "TRUE"' in text


def test_a_legacy_encoded_vmx_keeps_its_bytes_when_the_simulator_writes_it(host: Host) -> None:
    vmx = host.make_vm("a")
    raw = vmx.read_bytes().replace(b'"UTF-8"', b'"windows-1252"') + 'annotation = "Café"\n'.encode("cp1252")
    vmx.write_bytes(raw)
    host.ok("start", str(vmx))
    host.ok("stop", str(vmx), "hard")
    after = vmx.read_bytes()
    assert after.startswith(raw) and b"\xef\xbf\xbd" not in after, "no byte was replaced by U+FFFD"
    assert host.sim.read_dict(vmx)["annotation"] == "Café"


def test_snapshot_times_are_read_and_written_signed_as_vmware_writes_them(host: Host) -> None:
    vmx = host.make_vm("a")
    _, vmsd = realworld_sample("vmsd-esxi-four-snapshots.vmsd")  # snapshot1.createTimeLow = "-814770620"
    vmx.with_suffix(".vmsd").write_bytes(vmsd)
    snaps, current, last = host.sim.read_snapshots(vmx)
    assert snaps[1]["created"] == (388801 << 32) + (1 << 32) - 814770620 and (current, last) == (4, 4)
    assert host.ok("listSnapshots", str(vmx)) == "Total snapshots: 4\nSNAPSHOT POST INSTALL\nSECOND\nthird\nfrom cli\n"
    host.sim.write_snapshots(vmx, snaps, current, last)
    assert host.sim.read_dict(vmx.with_suffix(".vmsd"))["snapshot1.createtimelow"] == "-814770620"
