"""Two callers sending the same verb to one machine at the same moment.

Each caller is a separate process that opened the machine itself (or, for a harness whose
machines live in one process, a thread with its own handle). For every round the test names a
verb and a start time a few milliseconds ahead; both callers spin until that time, call the verb
and report their answer (``ok``, ``InvalidState:<state>`` or the foreign exception) with the
moments the call began and ended, so the test can check that the two calls really overlapped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import vmctl
from vmctl.testing._harness import Harness

#: how far ahead of now the two callers are told to begin (both have read the order by then)
LEAD = 0.03

WORKER = """
import json, sys, time
import vmctl
vm = hv.machine(NAME)
print("READY", flush=True)
for line in sys.stdin:
    verb, at = line.split()
    while time.monotonic() < float(at):
        pass  # a start line, not a wait for a state: both callers leave it at the same moment
    began = time.monotonic()
    try:
        getattr(vm, verb)()
        answer = "ok"
    except vmctl.InvalidState as exc:
        answer = "InvalidState:" + exc.state.value
    except BaseException as exc:
        answer = f"{type(exc).__name__}: {exc}"
    print(json.dumps([answer, began, time.monotonic()]), flush=True)
"""


def call(vm: vmctl.Machine, verb: str, at: float) -> list[Any]:
    while time.monotonic() < at:
        pass
    began = time.monotonic()
    try:
        getattr(vm, verb)()
        answer = "ok"
    except vmctl.InvalidState as exc:
        answer = "InvalidState:" + exc.state.value
    except BaseException as exc:
        answer = f"{type(exc).__name__}: {exc}"
    return [answer, began, time.monotonic()]


class ProcessCaller:
    def __init__(self, harness: Harness, name: str, cwd: Path | None = None) -> None:
        code = harness.connect_code() + f"NAME = {name!r}\n" + textwrap.dedent(WORKER)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "READY", line + self.proc.stderr.read() if self.proc.stderr else line

    def send(self, verb: str, at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{verb} {at}\n")
        self.proc.stdin.flush()

    def answer(self) -> list[Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "the caller died"
        result: list[Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ThreadCaller:
    def __init__(self, hv: vmctl.Hypervisor, name: str) -> None:
        self.vm = hv.machine(name)
        self.result: list[Any] = []
        self.thread: threading.Thread | None = None

    def send(self, verb: str, at: float) -> None:
        self.thread = threading.Thread(target=lambda: self.result.__setitem__(slice(None), call(self.vm, verb, at)))
        self.thread.start()

    def answer(self) -> list[Any]:
        assert self.thread is not None
        self.thread.join(120)
        assert not self.thread.is_alive(), "a verb did not return"
        return self.result

    def close(self) -> None:
        pass


def race(callers: list[ProcessCaller] | list[ThreadCaller], verb: str) -> list[list[Any]]:
    """Send ``verb`` to every caller for the same moment; their answers."""
    at = time.monotonic() + LEAD
    for caller in callers:
        caller.send(verb, at)
    return [caller.answer() for caller in callers]
