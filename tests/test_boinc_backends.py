"""The BOINC adapter runs a task's VM on VirtualBox, VMware Workstation and vSphere (issues 5 and 6).

One scenario, the life of a task, runs on each backend through the real adapter in-process (as
in tests/test_boinc_adapter.py) with the client double :class:`FakeClient` writing the real
``boinc_mmap_file`` messages. The adapter connects itself, with ``vmctl.connect()`` and the
connection options of the host's backend profile (the job file only names it); the test opens a
second connection to look at what it did.

1. The first run creates the VM from the job's base image without copying it (VirtualBox: a
   multiattach base with a differencing image in the VM's folder; Workstation: a linked clone
   whose delta disk names the base; vSphere: a delta disk over the base uploaded once to the
   datastore) and starts it.
2. ``<suspend/>``/``<resume/>`` pause and resume the VM in memory; vSphere cannot pause, so a
   suspend keeps it running for ``PARK_DELAY`` seconds and then saves it to disk, and the resume
   restores it (docs/boinc.md).
3. Periodic checkpoints: a snapshot with memory is taken and recorded, older ones are deleted.
4. ``<quit/>`` saves the VM's state to disk; a second adapter run in the same slot restores it
   (the guest is not rebooted).
5. The guest finishes: ``boinc_finish_called`` says 0, the output is copied out of the shared
   directory (where the backend has one), and the VM is destroyed with nothing left behind.

The peers are simulators: VirtualBox and VMware cannot run here, so ``VBoxManage`` and
``vmrun`` are the stateful simulators under tests/simulators (the contract suite's harnesses
set them up), and vSphere is VMware's own simulator, vcsim. How each guest "finishes" is a
stand-in, said per backend below: none of these peers runs a guest that could do work.

The adapter's clock is real time plus an offset the test can advance (checkpoint periods and
the park delay pass without waiting); the simulated guests run in real time.

Then: jobs a backend cannot run (a shared directory on vSphere, an overlay on VMware Player) fail
at once; and the fallbacks for a backend without pause, suspend or a console file, each in
detail on the in-memory backend told it lacks them (fake clock, as in test_boinc_adapter.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import vmctl
from tests.contract.harness import GuestProbe
from tests.contract.harness_virtualbox import SimGuestProbe, write_wrapper
from tests.contract.harness_virtualbox import load_simulator as load_vbox_simulator
from tests.contract.harness_vmware import SimProbe, fake_vmdk, make_vmrun, vmx_processes
from tests.contract.harness_vmware import load_simulator as load_vmrun_simulator
from tests.test_boinc_adapter import Env, make_env, started
from vmctl.boinc import reaper
from vmctl.boinc.adapter import EXIT_INIT_FAILURE, PARK_DELAY, Adapter
from vmctl.boinc.hostconfig import Profile
from vmctl.boinc.initdata import read_init_data
from vmctl.boinc.job import find_job_file, load_job
from vmctl.boinc.shm import Channel, open_shared_memory
from vmctl.boinc.slot import FINISH_FILE, STATE_FILE, TEMPORARY_EXIT_FILE, Slot
from vmctl.boinc.state import SNAPSHOT_PREFIX, TaskState
from vmctl.boinc.testing import FakeClient
from vmctl_memory import MemoryHypervisor, MemoryMachine

pytestmark = pytest.mark.timeout(180)

VM = "boinc-wu_0_0"
RESULT = "the guest's answer: 42\n"
CHECKPOINT_PERIOD = 5.0

COMMON_JOB = f"""\
backend = "{{backend}}"
image = "{{image}}"
memory_mib = 256
min_checkpoint_interval = {CHECKPOINT_PERIOD}
retry_delay = 1
{{extra}}
[backend_options]
"""

SHARED_JOB = """\
shared_dir = true
completion_trigger_file = "done"

[[output]]
from = "result.txt"
to = "result"
"""


class Clock:
    """Real monotonic time plus an offset the test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def skip(self, seconds: float) -> None:
        self.offset += seconds


class Task:
    """One BOINC data directory with a project and a slot holding one task, and its client."""

    def __init__(self, root: Path) -> None:
        self.boinc_dir = root / "boinc"
        self.project = self.boinc_dir / "projects" / "p"
        self.slot = self.boinc_dir / "slots" / "0"
        self.project.mkdir(parents=True)
        self.slot.mkdir(parents=True)
        self.clock = Clock()
        #: the host's backend profile the job names (set by the backend's setup)
        self.profile: Profile | None = None
        self.last_beat = -math.inf
        self.client = FakeClient(
            self.slot,
            project_dir=str(self.project),
            boinc_dir=str(self.boinc_dir),
            checkpoint_period=CHECKPOINT_PERIOD,
        )
        # the result's output file: a soft link into the project directory, as the client makes it
        self.link("result", "wu_0_0_r0")

    def link(self, open_name: str, physical_name: str) -> None:
        """A slot file that stands for a project file (the client's ``<soft_link>`` files)."""
        (self.slot / open_name).write_text(f"<soft_link>../../projects/p/{physical_name}</soft_link>\n")

    def add_file(self, open_name: str, physical_name: str, data: bytes) -> Path:
        path = self.project / physical_name
        path.write_bytes(data)
        self.link(open_name, physical_name)
        return path

    def write_job(self, text: str) -> None:
        self.add_file("vmctl_job.toml", "v1_vmctl_job.toml", text.encode())

    def adapter(self) -> Adapter:
        init = read_init_data(self.slot)
        return Adapter(
            Slot(self.slot),
            init,
            load_job(find_job_file(self.slot)),
            open_shared_memory(self.slot, init.shm_key),
            clock=self.clock,
            profile=self.profile,
        )

    def step(self, adapter: Adapter) -> int | None:
        """One 100 ms tick of client and adapter. The client beats once a second of the clock,
        as the real one does, however long the adapter's steps take (a loaded machine)."""
        now = self.clock()
        if now - self.last_beat >= 1.0:
            self.client.heartbeat()
            self.last_beat = now
        self.client.poll()
        started = time.monotonic()
        code = adapter.step()
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        return code

    def run(self, adapter: Adapter, seconds: float) -> None:
        """Run client and adapter for ``seconds`` of the clock, in as many ticks as fit (fewer
        on a loaded machine, where one step may take seconds); the task must not end."""
        end = self.clock() + seconds
        while True:
            code = self.step(adapter)
            assert code is None, f"the adapter exited with {code}: {self.exit_files()}"
            if self.clock() >= end:
                return

    def run_until(self, adapter: Adapter, done: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            code = self.step(adapter)
            assert code is None, f"the adapter exited with {code} while waiting for {what}: {self.exit_files()}"

    def run_to_exit(self, adapter: Adapter, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"the adapter did not exit within {timeout} s"
            code = self.step(adapter)
            if code is not None:
                return code

    def send(self, adapter: Adapter, message: str) -> int | None:
        """Queue a control message and let the adapter take it (within two ticks)."""
        self.client.control(message)
        code = None
        for _ in range(2):
            code = self.step(adapter)
            if code is not None:
                break
        assert not self.client.queue, f"{message} was not delivered"
        return code

    def state(self) -> TaskState:
        state = TaskState.load(self.slot / STATE_FILE)
        assert state is not None, "the adapter keeps a state file in the slot"
        return state

    def exit_files(self) -> str:
        found = {
            name: (self.slot / name).read_text()
            for name in (FINISH_FILE, TEMPORARY_EXIT_FILE)
            if (self.slot / name).exists()
        }
        return json.dumps(found)

    def close(self) -> None:
        self.client.close()


class Backend(ABC):
    """One backend under test: its peer, the job file naming it, and a view of what it did."""

    name = "?"
    image = "vm_image.img"
    #: the job shares a directory with the guest (its outputs are copied out of it)
    shares = True
    #: the guest's serial console goes to vm_console.log in the slot, and the probe sees the
    #: simulated guest's RAM counter
    guest_view = True

    @abstractmethod
    def setup(self, tmp: Path, task: Task) -> None:
        """Start the peer, put the base image in the project, write the job file."""

    @abstractmethod
    def connect(self) -> vmctl.Hypervisor:
        """The test's own connection (the adapter makes its own)."""

    @abstractmethod
    def probe(self, vm: vmctl.Machine) -> GuestProbe: ...

    @abstractmethod
    def check_overlay(self, vm: vmctl.Machine) -> None:
        """The VM writes to its own overlay over the base image, which stays where it is."""

    @abstractmethod
    def finish(self, vm: vmctl.Machine, task: Task) -> None:
        """Make the guest finish its work."""

    @abstractmethod
    def leftovers(self, name: str) -> list[str]:
        """Anything of the VM ``name`` still on the host or the server."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Remove whatever a failed test left."""


# -- VirtualBox ------------------------------------------------------------------------------------


class VirtualBoxSim(Backend):
    """VirtualBox through the VBoxManage simulator, with the contract suite's quirks switched on
    (every 7th command meets the transient "machine is locked" error, every second ``startvm``
    exits 1 after succeeding). The simulated guest finishes through its profile: after a second
    of running time it writes ``result.txt`` and ``done`` into the shared folder and powers off."""

    name = "virtualbox"
    image = "vm_image.vdi"

    def setup(self, tmp: Path, task: Task) -> None:
        self.sim: ModuleType = load_vbox_simulator()
        self.home = tmp / "vboxsim-home"
        self.vboxmanage = write_wrapper(tmp / "bin" / "VBoxManage", self.home)
        self.sim.add_fault(self.home, "lock", "*", count=None, every=7)
        self.sim.add_fault(self.home, "startvm_nonzero", "startvm", count=None, every=2)
        self.base = task.add_file(self.image, "v1_vm_image.vdi", b"<<vmctl test base image>>" + bytes(4096))
        self.base_bytes = self.base.read_bytes()
        self.options = {
            "vboxmanage": str(self.vboxmanage),
            "transport": "vboxmanage",
            "base_folder": "{slot}/vm",
            "retry_delay": 0.01,
        }
        self.base_folder = task.slot / "vm"
        task.write_job(COMMON_JOB.format(backend=self.name, image=self.image, extra=SHARED_JOB))
        task.profile = Profile(self.name, self.name, self.options)
        self.hv = vmctl.connect("virtualbox", **dict(self.options, base_folder=str(self.base_folder)))

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        return SimGuestProbe(self.sim, self.home, vm.name)

    def registry(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "state.json").read_text())
        return data

    def check_overlay(self, vm: vmctl.Machine) -> None:
        reg = self.registry()
        (machine,) = [m for m in reg["machines"].values() if m["name"] == vm.name]
        (attachment,) = machine["attachments"].values()
        disk = reg["media"][attachment["medium"]]
        assert disk.get("diff"), f"the VM's disk is a differencing image, not {disk}"
        assert Path(disk["path"]).is_relative_to(self.base_folder / vm.name), disk["path"]
        parent = reg["media"][disk["parent"]]
        assert (parent["path"], parent["type"]) == (str(self.base), "multiattach"), parent
        assert self.base.read_bytes() == self.base_bytes

    def finish(self, vm: vmctl.Machine, task: Task) -> None:
        self.sim.set_guest_profile(
            self.home, vm.name, poweroff_after=1.0, files={"shared": {"result.txt": RESULT, "done": "0\n"}}
        )

    def leftovers(self, name: str) -> list[str]:
        found = []
        if self.sim.guest_view(self.home, name) is not None:
            found.append(f"machine {name!r} still registered with the simulator")
        folder = self.base_folder / name
        if folder.exists():
            found += [str(p) for p in sorted(folder.rglob("*"))] or [str(folder)]
        found += [f"VM process {pid}" for pid in self.sim.vm_processes(self.home)]
        found += [m["path"] for m in self.registry()["media"].values() if m.get("diff")]
        if self.base.read_bytes() != self.base_bytes:
            found.append(f"the base image {self.base} was changed")
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            with contextlib.suppress(vmctl.VmctlError):
                vm.destroy()
        for pid in self.sim.vm_processes(self.home):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# -- VMware Workstation -----------------------------------------------------------------------------


class VmwareWsSim(Backend):
    """VMware Workstation through the vmrun simulator. vmrun's simulated guest cannot write into
    a shared folder, so the test writes ``result.txt`` and ``done`` into the VM's shared folder
    (the directory VMware shares with the guest) as the guest would."""

    name = "vmware"
    image = "vm_image.vmdk"
    product = "ws"

    def setup(self, tmp: Path, task: Task) -> None:
        self.sim: ModuleType = load_vmrun_simulator()
        self.home = tmp / "vmrunsim"
        self.vmrun = make_vmrun(tmp / "bin", self.home)
        self.vm_dir = tmp / "vmware-vms"
        self.base = fake_vmdk(task.project / "v1_vm_image.vmdk")
        task.link(self.image, self.base.name)
        self.base_bytes = self.base.read_bytes()
        self.options = {"product": self.product, "vmrun": str(self.vmrun), "vm_dir": str(self.vm_dir)}
        task.write_job(COMMON_JOB.format(backend=self.name, image=self.image, extra=SHARED_JOB))
        task.profile = Profile(self.name, self.name, self.options)
        self.hv = vmctl.connect("vmware", **self.options)

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def vmx(self, name: str) -> Path:
        return self.vm_dir / name / f"{name}.vmx"

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        return SimProbe(self.sim, self.home, self.vmx(vm.name), has_nic=False)

    def check_overlay(self, vm: vmctl.Machine) -> None:
        vmx = self.sim.read_dict(self.vmx(vm.name))
        disks = [v for k, v in vmx.items() if k.endswith(".filename") and v.lower().endswith(".vmdk")]
        assert len(disks) == 1, vmx
        delta = self.vmx(vm.name).parent / disks[0]
        assert f'parentFileNameHint="{self.base}"' in delta.read_text(), "a linked clone's delta over the base"
        assert self.base.read_bytes() == self.base_bytes

    def finish(self, vm: vmctl.Machine, task: Task) -> None:
        shared = task.slot / "shared"
        assert vm.spec.shared_dirs == {"shared": shared}, "the directory VMware shares with the guest"
        (shared / "result.txt").write_text(RESULT)
        (shared / "done").write_text("0\n")

    def leftovers(self, name: str) -> list[str]:
        self.sim.collect_garbage(self.home)
        inside = str(self.vm_dir / name) + os.sep
        found = [
            str(p)
            for p in self.vm_dir.iterdir()
            if p.name == name or p.name.startswith((f".{name}.creating-", f".{name}.deleting-"))
        ]
        found += [f"pid {p.pid}" for p in vmx_processes(inside)]
        found += [str(s) for s in (self.home / "vms").glob("*/state.json") if inside in s.read_text()]
        # What stays by design: the base VM wrapping the .vmdk (shared by every task's clones).
        found += [str(p) for p in self.vm_dir.iterdir() if p.name != ".bases" and p.name != name]
        if self.base.read_bytes() != self.base_bytes:
            found.append(f"the base image {self.base} was changed")
        return found

    def teardown(self) -> None:
        for vm in self.hv.machines():
            with contextlib.suppress(vmctl.VmctlError):
                vm.destroy()
        for proc in vmx_processes(str(self.vm_dir)):
            with contextlib.suppress(Exception):
                proc.kill()
        self.hv.close()


# -- vSphere ---------------------------------------------------------------------------------------------


class VsphereVcsim(Backend):
    """vSphere against vcsim. vSphere has no shared directories and no console file on this host,
    and vcsim runs no guest: the guest "powering itself off" when its work is done is played by
    the test, which powers the VM off through the vSphere API (pyVmomi's PowerOffVM_Task) on its
    own connection, outside the adapter. The job therefore has no outputs: completion is the
    power-off (``poweroff_completes``)."""

    name = "vsphere"
    shares = False
    guest_view = False

    def setup(self, tmp: Path, task: Task) -> None:
        from tests.vcsim import Vcsim

        password = secrets.token_urlsafe(16)
        self.server = Vcsim(username="vmctl", password=password, vms=0)
        self.server.start()
        password_file = task.project / "vsphere-password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        task.add_file(self.image, "v1_vm_image.img", b"\1" * (1 << 20))
        assert self.server.cert_file is not None
        self.options: dict[str, Any] = {
            "host": self.server.host,
            "port": self.server.port,
            "user": "vmctl",
            "password_file": "{project}/vsphere-password",
            "ca_file": str(self.server.cert_file),
            "folder": "boinc",
        }
        task.write_job(COMMON_JOB.format(backend=self.name, image=self.image, extra=""))
        task.profile = Profile(self.name, self.name, self.options)
        self.hv = vmctl.connect("vsphere", **dict(self.options, password_file=str(password_file)))

    def connect(self) -> vmctl.Hypervisor:
        return self.hv

    def probe(self, vm: vmctl.Machine) -> GuestProbe:
        from tests.contract.harness_vsphere import VcsimProbe

        return VcsimProbe(vm)

    def check_overlay(self, vm: vmctl.Machine) -> None:
        from pyVmomi import vim

        from vmctl_vsphere._machine import VSphereMachine

        assert isinstance(vm, VSphereMachine)
        devices = vm._props(["config.hardware.device"])["config.hardware.device"]
        (disk,) = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
        parent = disk.backing.parent
        assert parent is not None, "a delta disk over the uploaded base"
        assert "vmctl-images/" in parent.fileName, parent.fileName

    def finish(self, vm: vmctl.Machine, task: Task) -> None:
        from vmctl_vsphere._machine import VSphereMachine

        assert isinstance(vm, VSphereMachine)
        session = vm.hypervisor.session
        session.wait_task(session.invoke("poweroff", vm.ref.PowerOffVM_Task), 30, "the guest's power-off")

    def leftovers(self, name: str) -> list[str]:
        from pyVmomi import vim

        from vmctl_vsphere._hypervisor import VSphereHypervisor

        # What stays by design: the base image uploaded once under vmctl-images/.
        found = [
            str(path)
            for path in self.server.datastore_root.glob("*/*")
            if path.name == name or path.name.startswith(f"{name} (")
        ]
        assert isinstance(self.hv, VSphereHypervisor)
        for vm, props in self.hv.session.collect(self.hv.content.rootFolder, vim.VirtualMachine, ["name"]):
            if props.get("name") == name:
                found.append(f"VM {vm._moId} named {name!r}")
        return found

    def teardown(self) -> None:
        try:
            for vm in self.hv.machines():
                with contextlib.suppress(vmctl.VmctlError):
                    vm.destroy()
            self.hv.close()
        finally:
            self.server.stop()


BACKENDS: dict[str, type[Backend]] = {
    "virtualbox-sim": VirtualBoxSim,
    "vmware-ws-sim": VmwareWsSim,
    "vsphere-vcsim": VsphereVcsim,
}


@pytest.fixture(params=list(BACKENDS))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Task]]:
    backend = BACKENDS[request.param]()
    task = Task(tmp_path)
    try:
        backend.setup(tmp_path, task)
        yield backend, task
    finally:
        try:
            backend.teardown()
        finally:
            task.close()


def test_a_task_runs_from_creation_to_completion(setup: tuple[Backend, Task], caplog: pytest.LogCaptureFixture) -> None:
    backend, task = setup
    caplog.set_level("INFO", logger="vmctl.boinc")
    hv = backend.connect()

    # 1. created from the base image as an overlay, and started
    adapter = task.adapter()
    assert adapter.start() is None, task.exit_files()
    vm = hv.machine(VM)
    probe = backend.probe(vm)
    assert vm.state is vmctl.State.RUNNING
    assert vm.spec.overlay
    backend.check_overlay(vm)
    probe.wait_ready(15)
    assert probe.boots() == 1
    console = task.slot / "vm_console.log"
    if backend.guest_view:
        assert "VMCTL-GUEST READY" in console.read_text(), "the guest console, in the slot"
    else:
        assert not console.exists() and "no vm_console.log" in caplog.text
    pid = vm.pid
    task.client.status()
    task.run(adapter, 1.05)
    status = task.client.status()
    assert status is not None, "a status report every second"
    if pid is not None:
        assert status["other_pid"] == pid, "the VM's host process is reported as the task's"

    # 2. <suspend/> and <resume/>
    if vm.capabilities.pause:
        assert task.send(adapter, "<suspend/>") is None
        assert vm.state is vmctl.State.PAUSED
        counter = probe.counter()
        task.run(adapter, 1.5)
        assert vm.state is vmctl.State.PAUSED, "a suspended task's VM stays paused"
        assert probe.counter() == counter, "the guest is frozen"
        assert task.send(adapter, "<resume/>") is None
        assert vm.state is vmctl.State.RUNNING
        assert vm.pid == pid, "paused in memory: the same process"
    else:
        assert task.send(adapter, "<suspend/>") is None
        task.run(adapter, 1.5)
        assert vm.state is vmctl.State.RUNNING, "a short suspend (CPU throttling) leaves the VM alone"
        task.clock.skip(PARK_DELAY)
        task.run_until(adapter, lambda: vm.state is vmctl.State.SUSPENDED, 20, "the VM saved to disk")
        assert adapter.parked and task.state().saved_cpu_time is not None
        task.run(adapter, 1.5)
        assert vm.state is vmctl.State.SUSPENDED, "the suspended task's VM stays on disk"
        assert task.send(adapter, "<resume/>") is None
        assert vm.state is vmctl.State.RUNNING and not adapter.parked
        assert "the VM's state is saved to disk" in caplog.text
    assert probe.boots() == 1, "resumed, not rebooted"

    # 3. checkpoints: a snapshot with memory, recorded; the older one deleted
    seqs = []
    for _ in range(2):
        before = task.state().next_seq

        def taken(before: int = before) -> bool:
            return task.state().next_seq > before

        task.clock.skip(CHECKPOINT_PERIOD)
        task.run_until(adapter, taken, 20, "a checkpoint")
        checkpoint = task.state().checkpoint
        assert checkpoint is not None
        seqs.append(checkpoint.seq)
        snapshots = [s for s in vm.snapshots() if s.name.startswith(SNAPSHOT_PREFIX)]
        assert [s.name for s in snapshots] == [checkpoint.snapshot], "only the latest checkpoint is kept"
        assert snapshots[0].has_memory
    assert seqs[1] > seqs[0]

    # 4. <quit/> saves the VM's state; the next run in the same slot restores it
    counter = probe.counter() if backend.guest_view else 0
    task.client.status()
    assert task.send(adapter, "<quit/>") == 0
    assert vm.state is vmctl.State.SUSPENDED
    final = task.client.status()
    assert final is not None and final["checkpoint_cpu_time"] == final["current_cpu_time"]
    assert not (task.slot / FINISH_FILE).exists() and not (task.slot / TEMPORARY_EXIT_FILE).exists()
    assert task.state().saved_cpu_time == pytest.approx(final["current_cpu_time"], rel=1e-6)

    task.client.write_init_data(wu_cpu_time=final["checkpoint_cpu_time"])
    adapter = task.adapter()
    assert adapter.start() is None, task.exit_files()
    assert vm.state is vmctl.State.RUNNING
    assert probe.boots() == 1, "restored from the saved state, not rebooted"
    if backend.guest_view:
        assert probe.counter() >= counter > 0, "the guest's memory came back: no work lost"
    task.client.status()
    task.run(adapter, 1.05)
    status = task.client.status()
    assert status is not None and status["current_cpu_time"] >= final["current_cpu_time"], "CPU time continues"

    # 5. the guest finishes: output copied, boinc_finish_called, the VM destroyed
    backend.finish(vm, task)
    assert task.run_to_exit(adapter, 30) == 0
    assert (task.slot / FINISH_FILE).read_text() == "0\n"
    assert not (task.slot / TEMPORARY_EXIT_FILE).exists()
    if backend.shares:
        assert (task.project / "wu_0_0_r0").read_text() == RESULT, "the output, through the result's link"
    assert VM not in [m.name for m in hv.machines()]
    assert backend.leftovers(VM) == []
    assert list(reaper.registry_dir(task.boinc_dir).glob("*.json")) == [], "the reaper's record is removed"


class VmwarePlayerSim(VmwareWsSim):
    """VMware Player through the vmrun simulator: no linked clones."""

    product = "player"


@pytest.mark.parametrize(
    ("backend_class", "shared_dir", "why"),
    [(VsphereVcsim, True, "shared directories"), (VmwarePlayerSim, False, "Player's vmrun has no clone verb")],
    ids=["vsphere-vcsim-shared-dir", "vmware-player-sim-overlay"],
)
def test_a_job_the_backend_cannot_run_fails_at_once(
    tmp_path: Path, backend_class: type[Backend], shared_dir: bool, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A shared directory on vSphere, an overlay on Player: no retry can help, so the task fails
    with 206 (init failure) instead of coming back every half hour."""
    backend, task = backend_class(), Task(tmp_path)
    try:
        backend.setup(tmp_path, task)
        job = (task.project / "v1_vmctl_job.toml").read_text()
        if shared_dir:
            task.write_job(job.replace("[backend_options]", f"{SHARED_JOB}\n[backend_options]", 1))
        assert task.adapter().start() == EXIT_INIT_FAILURE
        assert not (task.slot / TEMPORARY_EXIT_FILE).exists()
        if shared_dir:  # named by the job's own key, before any VM is made
            assert "backend has no shared folders, which the job file's shared_dir need" in caplog.text
        else:
            assert f"cannot run this job: backend '{backend.name}' does not support" in caplog.text
            assert why in caplog.text
        assert backend.connect().machines() == []
    finally:
        backend.teardown()
        task.close()


@pytest.mark.parametrize("extpack", [True, False], ids=["vrde", "no-extension-pack"])
def test_virtualbox_remote_desktop_is_vrde_sent_as_localhost_port(
    tmp_path: Path, extpack: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``remote_desktop = true`` (``enable_remotedesktop``) on VirtualBox: VRDE on 127.0.0.1, its
    bound port sent on the graphics channel as vboxwrapper does; without the extension pack the
    task runs without it, said once (vboxwrapper: "remote desktop not enabled")."""
    backend, task = VirtualBoxSim(), Task(tmp_path)
    try:
        backend.setup(tmp_path, task)
        if not extpack:
            (backend.home / "no-extpack").touch()  # before the adapter connects and asks
        job = (task.project / "v1_vmctl_job.toml").read_text()
        task.write_job("remote_desktop = true\n" + job)
        adapter = task.adapter()
        assert adapter.start() is None, task.exit_files()
        vm = backend.connect().machine(VM)
        assert vm.spec.remote_desktop is extpack
        task.run(adapter, 1.1)
        reply = task.client.shm.receive(Channel.GRAPHICS_REPLY)
        if extpack:
            port = vm.info().raw["vrdeport"]  # type: ignore[attr-defined]
            assert vm.remote_desktop_address() == f"127.0.0.1:{port}"
            assert reply == f"<remote_desktop_addr>localhost:{port}</remote_desktop_addr>"
        else:
            assert reply is None and "remote desktop" in caplog.text
        assert task.send(adapter, "<quit/>") == 0
    finally:
        backend.teardown()
        task.close()


# -- what the adapter does without pause, suspend or a console file (the in-memory backend, told
# -- it lacks them; fake clock, as in tests/test_boinc_adapter.py) ----------------------------------


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[Env]:
    """tests/test_boinc_adapter.py's setup: a slot, the client double, the in-memory backend, a fake clock."""
    with make_env(tmp_path) as e:
        yield e


def lacking(monkeypatch: pytest.MonkeyPatch, **changes: bool) -> None:
    """Make the in-memory backend report (and enforce) capabilities it lacks."""
    original = MemoryHypervisor.capabilities.fget
    assert original is not None
    monkeypatch.setattr(MemoryHypervisor, "capabilities", property(lambda self: replace(original(self), **changes)))


def saved_cpu(mem: Env) -> float | None:
    """The CPU time of the VM state the adapter saved to disk, from its record in the slot."""
    state = TaskState.load(mem.slot / STATE_FILE)
    assert state is not None
    return state.saved_cpu_time


def test_without_pause_cpu_throttling_leaves_the_vm_running(mem: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    lacking(monkeypatch, pause=False)
    adapter = started(mem)
    vm = mem.vm()
    for _ in range(10):  # throttling: suspended for a few seconds at a time
        assert mem.send(adapter, "<suspend/>") is None
        mem.run(adapter, PARK_DELAY / 2)
        assert vm.state is vmctl.State.RUNNING
        assert mem.send(adapter, "<resume/>") is None
        mem.run(adapter, 1)
    assert vm.guest_boots() == 1 and not adapter.parked
    assert saved_cpu(mem) is None, "never saved to disk"


def test_without_pause_a_long_suspend_saves_the_vm_and_resume_restores_it(
    mem: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking(monkeypatch, pause=False)
    mem.client.write_init_data(wu_cpu_time=10.0)
    adapter = started(mem)
    vm = mem.vm()
    mem.run(adapter, 2)
    counter = vm.guest_counter()
    assert mem.send(adapter, "<suspend/>") is None
    mem.run(adapter, PARK_DELAY - 0.5)
    assert vm.state is vmctl.State.RUNNING
    mem.client.status()
    mem.run(adapter, 1.5)
    assert vm.state is vmctl.State.SUSPENDED and adapter.parked
    saved = saved_cpu(mem)
    assert saved is not None and saved > 10.0
    mem.run(adapter, 3)
    assert vm.state is vmctl.State.SUSPENDED, "not restored behind the client's back"
    assert mem.client.status() is None, "no status while suspended"
    assert mem.send(adapter, "<resume/>") is None
    assert vm.state is vmctl.State.RUNNING and not adapter.parked
    assert vm.guest_boots() == 1 and vm.guest_counter() >= counter, "restored, not rebooted"
    assert mem.next_status(adapter)["current_cpu_time"] >= saved, "CPU time continues"


def test_without_pause_quit_while_saved_keeps_the_saved_state(mem: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and names no VM process: the client kills ``other_pid`` when the app exits, and the
    saved VM's old process id may belong to another process by then. Naming nothing would not
    do: the client keeps the last other_pid it was told, so the adapter names itself."""
    lacking(monkeypatch, pause=False)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        monkeypatch.setattr(MemoryMachine, "_get_pid", lambda self: stand_in.pid)
        adapter = started(mem)
        assert mem.next_status(adapter)["other_pid"] == stand_in.pid
    finally:
        stand_in.kill()
        stand_in.wait()
    monkeypatch.undo()
    lacking(monkeypatch, pause=False)
    mem.run(adapter, 1)
    mem.send(adapter, "<suspend/>")
    mem.run(adapter, PARK_DELAY + 1.5)
    assert adapter.parked
    saved = saved_cpu(mem)
    mem.client.status()
    assert mem.send(adapter, "<quit/>") == 0
    final = mem.status()
    assert final["other_pid"] == os.getpid(), "no VM process to name: the adapter names itself"
    assert final["checkpoint_cpu_time"] == final["current_cpu_time"] == pytest.approx(saved, rel=1e-6)
    assert mem.vm().state is vmctl.State.SUSPENDED
    adapter = started(mem)
    assert mem.vm().state is vmctl.State.RUNNING and mem.vm().guest_boots() == 1


def test_without_pause_or_suspend_the_vm_runs_on(
    mem: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lacking(monkeypatch, pause=False, suspend=False)
    adapter = started(mem)
    caplog.set_level("WARNING", logger="vmctl.boinc")
    mem.send(adapter, "<suspend/>")
    mem.run(adapter, PARK_DELAY * 3)
    assert mem.vm().state is vmctl.State.RUNNING
    assert caplog.text.count("can neither pause nor save the VM") == 1
    assert mem.send(adapter, "<resume/>") is None
    mem.run(adapter, 1)
    assert mem.vm().state is vmctl.State.RUNNING


def test_a_backend_without_a_console_file_runs_without_it(
    mem: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lacking(monkeypatch, serial_log=False)  # create refuses a serial log: the adapter must ask first
    caplog.set_level("WARNING", logger="vmctl.boinc")
    started(mem)
    assert mem.vm().spec.serial_log is None and mem.vm().state is vmctl.State.RUNNING
    assert "no vm_console.log" in caplog.text


def test_without_pause_a_saved_vm_restarted_by_someone_else_is_saved_again(
    mem: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking(monkeypatch, pause=False)
    adapter = started(mem)
    mem.send(adapter, "<suspend/>")
    mem.run(adapter, PARK_DELAY + 1.5)
    assert adapter.parked
    mem.vm().start()  # e.g. by hand, while the task is still suspended
    mem.run(adapter, 1.1)
    assert not adapter.parked and mem.vm().state is vmctl.State.RUNNING
    mem.run(adapter, PARK_DELAY + 1)
    assert adapter.parked and mem.vm().state is vmctl.State.SUSPENDED


def test_without_pause_a_saved_state_discarded_meanwhile_is_trouble_not_completion(
    mem: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest cannot power off while its state is on disk: a STOPPED VM then is not the guest
    finishing its work (poweroff_completes), but the state lost."""
    lacking(monkeypatch, pause=False)
    adapter = started(mem)
    mem.send(adapter, "<suspend/>")
    mem.run(adapter, PARK_DELAY + 1.5)
    mem.vm().poweroff()  # discards the saved state
    assert mem.run(adapter, 1.1) == 0
    assert "discarded" in (mem.slot / TEMPORARY_EXIT_FILE).read_text()
    adapter = started(mem)  # the next run boots afresh (no checkpoint yet) instead of finishing
    assert not (mem.slot / FINISH_FILE).exists()
    assert mem.vm().state is vmctl.State.RUNNING and mem.vm().guest_boots() == 2
