"""Contract harness for the vSphere backend against VMware's simulator, vcsim (tests/vcsim.py).

vcsim runs no guest, so its probe is honest about it: ``ready`` means "powered on" as the server
reports it, ``boots`` counts the boots vSphere's event log records for the VM (power-ons that
were not resumes, and resets), and whatever needs the guest's own view (a counter in its memory,
the power-button presses it saw, its link) skips the test with the reason instead of inventing
an answer. To play a guest whose VMware Tools
run, the probe tells vcsim so (``SET.guest.toolsRunningStatus``, vcsim's own hook for tests) once
the VM is powered on; a guest that ignores a Tools shutdown cannot be simulated (vcsim's
ShutdownGuest always powers off), and vcsim has no VM process to kill.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pyVmomi import vim

import vmctl
from vmctl.testing import GuestProbe, Harness

from ..vcsim import Vcsim

NO_GUEST = "vcsim runs no guest: {} cannot be observed"


class VcsimProbe(GuestProbe):
    """What can be seen of a vcsim VM: its power state, nothing from inside."""

    def __init__(self, vm: vmctl.Machine) -> None:
        self.vm = vm

    def ready(self) -> bool:
        if self.vm.state is not vmctl.State.RUNNING:
            return False
        set_tools_running(self.vm)
        return True

    def counter(self) -> int:
        pytest.skip(NO_GUEST.format("a counter in guest memory"))

    def power_button_presses(self) -> int:
        pytest.skip(NO_GUEST.format("the guest's power-button presses"))

    def boots(self) -> int:
        """Boots of the VM as the server's event log has them (not seen from inside a guest)."""
        from vmctl_vsphere._machine import VSphereMachine

        assert isinstance(self.vm, VSphereMachine)
        session = self.vm.hypervisor.session
        events = session.invoke(
            "QueryEvents",
            lambda: session.content.eventManager.QueryEvents(
                vim.event.EventFilterSpec(
                    entity=vim.event.EventFilterSpec.ByEntity(entity=self.vm.ref, recursion="self"),
                    eventTypeId=["VmPoweredOnEvent", "VmSuspendedEvent", "VmResettingEvent"],
                    maxCount=1000,
                )
            ),
        )
        boots, suspended = 0, False
        for event in sorted(events or (), key=lambda e: e.key):
            if isinstance(event, vim.event.VmSuspendedEvent):
                suspended = True
            elif isinstance(event, vim.event.VmPoweredOnEvent):
                boots += 0 if suspended else 1
                suspended = False
            elif isinstance(event, vim.event.VmResettingEvent):
                boots += 1
        return boots

    def link_up(self) -> bool | None:
        pytest.skip(NO_GUEST.format("the guest's view of its link"))


def set_tools_running(vm: vmctl.Machine, status: str = "guestToolsRunning") -> None:
    """Tell vcsim the VM's VMware Tools report ``status`` (a simulator hook; real vSphere ignores it)."""
    from vmctl_vsphere._machine import VSphereMachine

    assert isinstance(vm, VSphereMachine)
    current = vm._props(["guest.toolsRunningStatus"]).get("guest.toolsRunningStatus")
    if current != status:
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="SET.guest.toolsRunningStatus", value=status)])
        vm._reconfigure("simulate tools", spec)


class VsphereVcsimHarness(Harness):
    id = "vsphere-vcsim"
    backend = "vsphere"
    boot_timeout = 10
    multi_process = True
    real_guest = False
    guest_view = False
    can_ignore_power_button = False
    can_crash = False
    #: vcsim 0.24 implements neither RebootGuest nor CreateScreenshot_Task (MethodNotFound)
    peer_lacks = frozenset({"graceful_restart", "screenshot"})

    def setup(self, tmp: Path) -> None:
        self.tmp = tmp
        self.password_file = tmp / "password"
        password = secrets.token_urlsafe(16)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        self.server = Vcsim(username="vmctl", password=password)
        self.server.start()
        self.disk = tmp / "base.img"
        self.disk.write_bytes(b"\0" * (1 << 20))  # a raw image; vcsim never reads it
        self.folder = "vmctl-contract"
        self.hv = self._connect()

    def _connect(self) -> vmctl.Hypervisor:
        return vmctl.connect(
            "vsphere",
            host=self.server.host,
            port=self.server.port,
            user="vmctl",
            password_file=self.password_file,
            ca_file=self.server.cert_file,
            folder=self.folder,
            timeout=30,
        )

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def connect_code(self) -> str:
        return (
            "import vmctl\n"
            f"hv = vmctl.connect('vsphere', host={self.server.host!r}, port={self.server.port}, user='vmctl', "
            f"password_file={str(self.password_file)!r}, ca_file={str(self.server.cert_file)!r}, "
            f"folder={self.folder!r})\n"
        )

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        if ignore_power_button:
            pytest.skip("vcsim's ShutdownGuest always powers off: a guest ignoring it cannot be simulated")
        return vmctl.MachineSpec(name=name, disk=self.disk, network=vmctl.Network() if network else None)

    def spec_code(self, name: str) -> str:
        return f"vmctl.MachineSpec(name={name!r}, disk={str(self.disk)!r})"

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        return VcsimProbe(vm)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        pytest.skip("vcsim has no VM process to kill")

    def leftovers(self, name: str) -> list[str]:
        found = [
            str(path)
            for path in self.server.datastore_root.glob("*/*")
            if path.name == name or path.name.startswith(f"{name} (")
        ]
        from vmctl_vsphere._hypervisor import VSphereHypervisor

        assert isinstance(self.hv, VSphereHypervisor)
        content = self.hv.content
        for vm, props in self.hv.session.collect(content.rootFolder, vim.VirtualMachine, ["name"]):
            if props.get("name") == name:
                found.append(f"VM {vm._moId} named {name!r}")
        return found

    def teardown(self) -> None:
        try:
            for vm in self.hv.machines():
                vm.destroy()
            self.hv.close()
        finally:
            self.server.stop()


HARNESSES = [VsphereVcsimHarness]
