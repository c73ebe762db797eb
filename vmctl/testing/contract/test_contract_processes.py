"""The contract, part 4: other processes driving the same machines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import vmctl
from vmctl import State
from vmctl.testing._harness import Harness
from vmctl.testing.contract._steps import MakeVm, boot, needs


@needs("multi_process")
def test_another_process_controls_the_machine(harness: Harness, hv: vmctl.Hypervisor, make_vm: MakeVm) -> None:
    vm = make_vm()
    boot(harness, vm)
    verb, expected = ("pause", State.PAUSED) if hv.capabilities.pause else ("suspend", State.SUSPENDED)
    pid = vm.pid
    code = harness.connect_code() + textwrap.dedent(
        f"""
        vm = hv.machine({vm.name!r})
        print(vm.state.value, vm.pid, flush=True)
        vm.{verb}()
        print(vm.state.value, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "running" and lines[1] == str(pid) and lines[2] == expected.value
    assert vm.state is expected
    vm.poweroff()


@needs("multi_process")
def test_concurrent_creates_of_one_name_make_one_machine(harness: Harness, hv: vmctl.Hypervisor) -> None:
    name = f"race{time.monotonic_ns() % 100000}"
    code = harness.connect_code() + textwrap.dedent(
        f"""
        import sys, vmctl
        spec = {harness.spec_code(name)}
        try:
            hv.create(spec)
            print("created")
        except vmctl.MachineExists:
            print("exists")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        results = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    finally:
        for p in procs:
            p.kill()
    try:
        assert results == ["created", "exists", "exists"]
        assert hv.machine(name).state is State.STOPPED
    finally:
        hv.machine(name).destroy()
