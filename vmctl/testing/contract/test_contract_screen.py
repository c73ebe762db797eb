"""The contract, part 5: the guest's screen (``Machine.screenshot``)."""

from __future__ import annotations

import struct

import pytest

import vmctl
from vmctl import State
from vmctl.screenshot import PNG_SIGNATURE
from vmctl.testing._harness import Harness, wait_until
from vmctl.testing._png import colours
from vmctl.testing.contract._steps import MakeVm, boot


def test_screenshot_of_a_running_machine_is_a_png(harness: Harness, make_vm: MakeVm) -> None:
    vm = make_vm()
    if not vm.capabilities.screenshot or "screenshot" in harness.peer_lacks:
        boot(harness, vm)
        with pytest.raises(vmctl.Unsupported):
            vm.screenshot()
        assert vm.state is State.RUNNING
        return
    with pytest.raises(vmctl.InvalidState) as stopped:
        vm.screenshot()
    assert stopped.value.state is State.STOPPED
    boot(harness, vm)
    shot = vm.screenshot()
    assert isinstance(shot, vmctl.Screenshot)
    assert shot.png.startswith(PNG_SIGNATURE) and shot.png[12:16] == b"IHDR"
    assert (shot.width, shot.height) == struct.unpack(">II", shot.png[16:24])
    assert 64 <= shot.width <= 8192 and 64 <= shot.height <= 8192
    assert shot._repr_png_() == shot.png
    if harness.real_guest:
        # the guest's screen shows text (the firmware's and the kernel's messages): not one colour
        wait_until(lambda: colours(vm.screenshot().png) > 1, harness.boot_timeout, "text on the guest's screen")
    if vm.capabilities.pause:
        vm.pause()
        assert vm.screenshot().width == shot.width
        vm.resume()
    vm.poweroff()
    with pytest.raises(vmctl.InvalidState) as off:
        vm.screenshot()
    assert off.value.state is State.STOPPED
