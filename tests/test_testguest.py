"""The offline-built test guest: build (cached per machine), then boot it once with raw QEMU."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmctl.testguest import GuestBuildError, TestGuest, ensure_test_guest

QEMU = "qemu-system-x86_64"
BOOT_DEADLINE = 120.0  # TCG boots in about 5 s; leave room for a loaded machine
STOP_DEADLINE = 60.0


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    return ensure_test_guest()


def test_guest_files(guest: TestGuest) -> None:
    assert guest.kernel.is_file() and guest.kernel.stat().st_size > 4_000_000
    assert guest.initrd.is_file() and guest.initrd.stat().st_size > 1_000_000
    with gzip.open(guest.initrd) as fh:
        assert fh.read(6) == b"070701"  # cpio newc
    assert guest.disk.read_bytes()[:4] == b"QFI\xfb"  # qcow2
    assert "console=ttyS0" in guest.cmdline and "panic=-1" in guest.cmdline


def test_second_call_is_cached(guest: TestGuest) -> None:
    started = time.monotonic()
    again = ensure_test_guest()
    assert time.monotonic() - started < 2.0
    assert again == guest


def test_missing_cache_dir_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GuestBuildError, match="cache directory"):
        ensure_test_guest(blocker / "sub")


class _Qmp:
    """Just enough QMP over a unix socket for this test."""

    def __init__(self, path: Path, deadline: float) -> None:
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(10)
                self._sock.connect(str(path))
                break
            except OSError:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._file = self._sock.makefile("rwb")
        greeting = self._read()
        assert "QMP" in greeting
        assert "return" in self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _wait_for(log: Path, text: str, deadline: float, proc: subprocess.Popen[bytes]) -> str:
    while True:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None:
            pytest.fail(f"QEMU exited ({proc.returncode}) before {text!r}; console:\n{content}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} on the console in time; console:\n{content}")
        time.sleep(0.1)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths are limited to about 107 bytes; pytest's tmp_path can be longer
    d = Path(tempfile.mkdtemp(prefix="vmctl-tg-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_boot_ready_and_power_button(guest: TestGuest, tmp_path: Path, short_dir: Path) -> None:
    if shutil.which(QEMU) is None or shutil.which("qemu-img") is None:
        pytest.skip("QEMU is not installed (apt-get install qemu-system-x86 qemu-utils)")
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(guest.disk), str(overlay)],
        check=True,
        timeout=60,
    )
    serial = tmp_path / "serial.log"
    qmp_sock = short_dir / "qmp.sock"
    argv = [
        QEMU, "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nodefaults", "-display", "none",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.cmdline,
        "-drive", f"file={overlay},if=none,id=disk0,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk0",
        "-chardev", f"file,id=ser0,path={serial},append=on", "-serial", "chardev:ser0",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
    ]  # fmt: skip
    qmp: _Qmp | None = None
    qemu_out = tmp_path / "qemu.out"
    with open(qemu_out, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        console = _wait_for(serial, "VMCTL-GUEST READY", started + BOOT_DEADLINE, proc)
        assert console.index("VMCTL-GUEST BOOT") < console.index("VMCTL-GUEST READY")
        assert "VMCTL-GUEST DISK mounted" in console
        _wait_for(serial, "VMCTL-GUEST TICK n=2 ", time.monotonic() + 30, proc)

        qmp = _Qmp(qmp_sock, time.monotonic() + 30)
        assert "return" in qmp.execute("system_powerdown")
        try:
            rc = proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail("the guest did not power off after the ACPI power button")
        console = serial.read_text(errors="replace")
        assert "VMCTL-GUEST POWERBUTTON" in console
        assert rc == 0, qemu_out.read_text(errors="replace")
    finally:
        if qmp is not None:
            qmp.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
