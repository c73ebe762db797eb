"""Contract harnesses for the libvirt backend: the mock driver and a real libvirtd with TCG guests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import vmctl
from vmctl.testing import GuestProbe, Harness, SerialLogProbe
from vmctl.tools import run_tool

#: Where the test guest is copied so that libvirt's QEMU user (libvirt-qemu) can read it.
GUEST_IMAGE_ROOT = Path("/var/lib/libvirt/images/vmctl-testguest")
#: A guest kernel parameter that stops the ACPI button driver from loading: a guest that
#: never sees the power button (the kernel refuses blacklisted modules, also via insmod).
IGNORE_POWER_BUTTON = "module_blacklist=button"


def load_services() -> ModuleType:
    """tests/services.py, imported by path (tests/ need not be a package)."""
    path = Path(__file__).resolve().parent.parent / "services.py"
    spec = importlib.util.spec_from_file_location("vmctl_test_services", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def readable_test_guest() -> tuple[Path, Path, Path, str]:
    """(kernel, initrd, base disk, cmdline) of the test guest, in a directory the daemon can read."""
    from vmctl.testguest import ensure_test_guest

    guest = ensure_test_guest()
    target = GUEST_IMAGE_ROOT / guest.kernel.parent.name
    if not (target / "disk.qcow2").is_file():
        GUEST_IMAGE_ROOT.mkdir(parents=True, exist_ok=True)
        GUEST_IMAGE_ROOT.chmod(0o755)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=GUEST_IMAGE_ROOT))
        try:
            for src in (guest.kernel, guest.initrd, guest.disk):
                shutil.copyfile(src, tmp / src.name)
                (tmp / src.name).chmod(0o644)
            tmp.chmod(0o755)
            try:
                os.rename(tmp, target)
            except OSError:  # another process copied it meanwhile
                if not (target / "disk.qcow2").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target / guest.kernel.name, target / guest.initrd.name, target / guest.disk.name, guest.cmdline


class MockDriverProbe(GuestProbe):
    """libvirt's test driver has no guest: only the driver's own view can be observed."""

    def __init__(self, vm: vmctl.Machine) -> None:
        self.vm = vm

    def ready(self) -> bool:
        return self.vm.state is vmctl.State.RUNNING

    def _none(self, what: str) -> int:
        raise NotImplementedError(f"libvirt's test driver has no guest: {what} cannot be observed")

    def counter(self) -> int:
        return self._none("a guest counter")

    def power_button_presses(self) -> int:
        return self._none("power button presses")

    def boots(self) -> int:
        return self._none("guest boots")


class LibvirtTestDriverHarness(Harness):
    """``test:///default``: libvirt's in-process mock driver. Fast, no daemon, no guest."""

    id = "libvirt-test"
    backend = "libvirt"
    guest_view = False
    can_ignore_power_button = False
    can_crash = False
    boot_timeout = 5
    #: test:///default is private to each process: another process sees a fresh driver.
    multi_process = False
    real_guest = False

    def setup(self, tmp: Path) -> None:
        self.tmp = tmp
        self.disk = tmp / "base.qcow2"
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "16M"], timeout=30)
        self.state_dir = tmp / "overlays"
        self.hv = vmctl.connect("libvirt", uri="test:///default", state_dir=self.state_dir)

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        # ignore_power_button cannot be honoured: the mock driver's shutdown always succeeds.
        return vmctl.MachineSpec(name=name, disk=self.disk, network=vmctl.Network() if network else None)

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        return MockDriverProbe(vm)

    def spec_code(self, name: str) -> str:
        return f"vmctl.MachineSpec(name={name!r}, disk={str(self.disk)!r})"

    def leftovers(self, name: str) -> list[str]:
        found = [f"domain {name}" for vm in self.hv.machines() if vm.name == name]
        found += [str(p) for p in self.state_dir.glob(f"{name}-*.qcow2")] if self.state_dir.is_dir() else []
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            vm.destroy()
        self.hv.close()


class LibvirtQemuHarness(Harness):
    """``qemu:///system`` on a real libvirtd (started if needed), TCG guests of vmctl.testguest."""

    id = "libvirt-qemu"
    backend = "libvirt"
    boot_timeout = 60
    multi_process = True
    real_guest = True
    uri = "qemu:///system"

    def setup(self, tmp: Path) -> None:
        load_services().ensure_libvirtd()
        self.tmp = tmp
        self.kernel, self.initrd, self.disk, self.cmdline = readable_test_guest()
        self.state_dir = Path("/var/lib/libvirt/images/vmctl")
        self.hv = vmctl.connect("libvirt", uri=self.uri, state_dir=self.state_dir)

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def connect_code(self) -> str:
        return f"import vmctl\nhv = vmctl.connect('libvirt', uri={self.uri!r}, state_dir={str(self.state_dir)!r})\n"

    def spec_code(self, name: str) -> str:
        return (
            f"vmctl.MachineSpec(name={name!r}, disk={str(self.disk)!r}, kernel={str(self.kernel)!r}, "
            f"initrd={str(self.initrd)!r}, cmdline={self.cmdline!r})"
        )

    def serial_log(self, name: str) -> Path:
        return self.tmp / f"{name}.serial.log"

    def spec(self, name: str, *, network: bool = False, ignore_power_button: bool = False) -> vmctl.MachineSpec:
        cmdline = self.cmdline + (" " + IGNORE_POWER_BUTTON if ignore_power_button else "")
        return vmctl.MachineSpec(
            name=name,
            disk=self.disk,
            kernel=self.kernel,
            initrd=self.initrd,
            cmdline=cmdline,
            memory_mib=256,
            network=vmctl.Network() if network else None,
            serial_log=self.serial_log(name),
        )

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        log = vm.spec.serial_log
        assert log is not None
        return SerialLogProbe(log)

    def kill_hypervisor_process(self, vm: vmctl.Machine) -> None:
        pid = vm.pid
        assert pid is not None, f"{vm.name} has no QEMU process"
        os.kill(pid, signal.SIGKILL)

    def leftovers(self, name: str) -> list[str]:
        found: list[str] = []
        try:
            out = run_tool(["virsh", "-c", self.uri, "list", "--all", "--name"], timeout=30).stdout.split()
            found += [f"domain {name}" for d in out if d == name]
        except vmctl.BackendError:
            pass
        found += [str(p) for p in self.state_dir.glob(f"{name}-*.qcow2")]
        for extra in (Path(f"/var/lib/libvirt/qemu/save/{name}.save"), Path(f"/var/run/libvirt/qemu/{name}.pid")):
            if extra.exists():
                found.append(str(extra))
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-system-x86_64") and f"guest={name},".encode() in b" ".join(argv):
                found.append(f"qemu process {proc.name}")
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            vm.destroy()
        self.hv.close()


HARNESSES = [LibvirtTestDriverHarness, LibvirtQemuHarness]
