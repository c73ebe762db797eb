"""VirtualBox's remote desktop (VRDE, issue 14) against the VBoxManage simulator.

``remote_desktop=True`` turns VRDE on at create as vboxwrapper does (``--vrde on --vrdeextpack
default --vrdeauthlibrary default --vrdeauthtype null``), bound to 127.0.0.1 with a port range;
``remote_desktop_address()`` reads back the port the VRDE server bound (``vrdeport=``). Without
the extension pack (``list extpacks`` names no VRDE module) the capability is off and such a spec
is refused with :class:`vmctl.Unsupported`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from tests.contract.harness_virtualbox import load_simulator, write_wrapper
from tests.test_virtualbox_realworld import compare_lines
from vmctl import State

pytestmark = pytest.mark.timeout(60)


class Sim:
    def __init__(self, tmp_path: Path) -> None:
        self.module = load_simulator()
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.vboxmanage = write_wrapper(tmp_path / "bin" / "VBoxManage", self.home)
        self.disk = tmp_path / "base.vdi"
        self.disk.write_bytes(os.urandom(64 * 1024))
        self.base_folder = tmp_path / "vms"
        self.hvs: list[vmctl.Hypervisor] = []

    def connect(self) -> vmctl.Hypervisor:
        hv = vmctl.connect(
            "virtualbox",
            vboxmanage=str(self.vboxmanage),
            transport="vboxmanage",
            base_folder=str(self.base_folder),
            retry_delay=0.01,
        )
        self.hvs.append(hv)
        return hv

    def spec(self, name: str, **kw: object) -> vmctl.MachineSpec:
        return vmctl.MachineSpec(name=name, disk=self.disk, **kw)  # type: ignore[arg-type]

    def showvminfo(self, name: str) -> str:
        import subprocess

        argv = [str(self.vboxmanage), "showvminfo", name, "--machinereadable"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout

    def info(self, name: str) -> dict[str, str]:
        return self.hvs[0].machine(name).info().raw  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path)
    try:
        yield s
    finally:
        for hv in s.hvs[:1]:
            for vm in hv.machines():
                try:
                    vm.destroy()
                except vmctl.VmctlError:
                    pass
        for pid in s.module.vm_processes(s.home):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_remote_desktop_is_vrde_on_loopback_at_the_port_virtualbox_bound(sim: Sim) -> None:
    hv = sim.connect()
    assert hv.capabilities.remote_desktop
    a = hv.create(sim.spec("rd-a", remote_desktop=True))
    b = hv.create(sim.spec("rd-b", remote_desktop=True))
    hv.create(sim.spec("rd-none"))
    info = sim.info("rd-a")
    # the settings VBoxManage reports back: loopback, a range, no authentication (nothing on argv)
    assert (info["vrde"], info["vrdeaddress"], info["vrdeauthtype"]) == ("on", "127.0.0.1", "null")
    assert info["vrdeport"] == "-1"  # IVRDEServerInfo::port of a server not started
    assert "-" in info["vrdeports"]
    assert sim.info("rd-none")["vrde"] == "off"
    assert a.remote_desktop_address() is None  # not running
    vrde_keys = ("vrde=", "vrdeport=", "vrdeports=", "vrdeaddress=", "vrdeauthtype=", "vrdeproperty[TCP/Ports]=")
    # the simulator's VRDE lines have the forms a real capture shows (tests/realworld/virtualbox)
    printed = sim.showvminfo("rd-a")
    assert all(k in printed for k in vrde_keys) and compare_lines(printed, "showvminfo") >= 40
    a.start()
    b.start()
    addresses = [a.remote_desktop_address(), b.remote_desktop_address()]
    ports = [sim.info("rd-a")["vrdeport"], sim.info("rd-b")["vrdeport"]]
    assert addresses == [f"127.0.0.1:{p}" for p in ports]
    assert compare_lines(sim.showvminfo("rd-a"), "showvminfo") >= 40
    assert ports[0] != ports[1]  # two VMs from one range never collide
    lo, hi = (int(p) for p in info["vrdeports"].split("-"))
    assert all(lo <= int(p) <= hi for p in ports)
    # the spec says so after a reconnect too (it is stored with the VM)
    again = sim.connect().machine("rd-a")
    assert again.spec.remote_desktop and again.remote_desktop_address() == addresses[0]
    a.poweroff()
    assert a.state is State.STOPPED and a.remote_desktop_address() is None


def test_without_the_extension_pack_remote_desktop_is_unsupported(sim: Sim) -> None:
    (sim.home / "no-extpack").touch()
    hv = sim.connect()
    assert not hv.capabilities.remote_desktop
    with pytest.raises(vmctl.Unsupported, match="extension pack"):
        hv.create(sim.spec("rd-x", remote_desktop=True))
    assert "rd-x" not in {m.name for m in hv.machines(all=True)}
    hv.create(sim.spec("rd-y")).destroy()  # everything else still works


def test_simulated_list_extpacks_has_vboxmanages_form(sim: Sim) -> None:
    import subprocess

    out = subprocess.run([str(sim.vboxmanage), "list", "extpacks"], capture_output=True, text=True, timeout=30).stdout
    assert out.startswith("Extension Packs: 1\nPack no. 0:   Oracle VM VirtualBox Extension Pack\n")
    assert "VRDE Module:  VBoxVRDP\n" in out and "Usable:       true\n" in out
