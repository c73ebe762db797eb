"""The progress reporter: where it draws, what it draws, and when it stays silent."""

from __future__ import annotations

import io
import threading

import pytest

from tests.contract.harness import wait_until
from vmctl import progress as progress_mod
from vmctl.progress import Progress, reporting


class Tty(io.StringIO):
    """A terminal stand-in: a text stream that says it is a tty and is safe to read while written."""

    def __init__(self, encoding: str = "utf-8") -> None:
        super().__init__()
        self._encoding = encoding
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMCTL_PROGRESS", raising=False)


def test_silent_when_the_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress("work", total=3, stream=out) as p:
        p("a message")
        p.update(3)
    assert p.mode == "silent" and out.getvalue() == ""


@pytest.mark.parametrize("env", ["0", "false", "off"])
def test_silent_on_a_terminal_when_the_environment_says_so(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("VMCTL_PROGRESS", env)
    tty = Tty()
    with Progress("work", stream=tty) as p:
        p("x")
    assert p.mode == "silent" and tty.text() == ""


def test_silent_on_a_terminal_when_the_caller_says_so() -> None:
    tty = Tty()
    with Progress("work", stream=tty, enabled=False) as p:
        p("x")
    assert tty.text() == ""


def test_spinner_with_elapsed_time_redrawn_in_place() -> None:
    tty = Tty()
    with Progress("booting", stream=tty, refresh=0.01) as p:
        assert p.mode == "terminal"
        p("waiting for the guest")
        # the spinner thread redraws on its own: wait until it has drawn several frames
        wait_until(lambda: tty.text().count("\r\x1b[K") >= 5, 5, "spinner frames")
    out = tty.text()
    frames = out.split("\r\x1b[K")[1:]
    assert len({f[0] for f in frames[:-1]}) > 1  # the spinner character changes
    assert any("booting  waiting for the guest" in f for f in frames)
    assert all(f.rstrip().endswith(" s") for f in frames[:-1])  # elapsed time on every frame
    assert frames[-1].startswith("✓ booting: done in ") and frames[-1].endswith(" s\n")
    assert p._thread is not None and not p._thread.is_alive()


def test_bar_when_the_total_is_known() -> None:
    tty = Tty()
    with Progress("copying", total=8, unit="B", stream=tty, refresh=60) as p:
        p.update(2 * 1024)
        p.update(completed=4, total=8)
    frames = tty.text().split("\r\x1b[K")
    assert "copying  " + "█" * 12 + "░" * 12 + "   50% 4 B/8 B" in frames[-2]
    assert any("2.0 KiB/8 B" in f and "100%" in f for f in frames)  # beyond the total: clamped at 100%


def test_ascii_when_the_terminal_is_not_utf8() -> None:
    tty = Tty(encoding="ascii")
    with Progress("plain", total=4, stream=tty, refresh=60) as p:
        p.update(1)
    out = tty.text()
    out.encode("ascii")
    assert "######------------------" in out and out.endswith("ok plain: done in " + out.split("done in ")[1])


def test_failure_is_reported_and_the_exception_propagates() -> None:
    tty = Tty()
    with pytest.raises(RuntimeError, match="boom"), Progress("building", stream=tty, refresh=60):
        raise RuntimeError("boom")
    assert tty.text().split("\r\x1b[K")[-1].startswith("✗ building: failed after ")


def test_long_lines_are_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    tty = Tty()
    with Progress("x" * 100, stream=tty, refresh=60):
        pass
    assert all(len(frame) <= 39 for frame in tty.text().split("\r\x1b[K")[1:-1])


def test_lines_mode_when_forced_on_a_pipe() -> None:
    out = io.StringIO()
    with Progress("guest", stream=out, enabled=True) as p:
        p("downloading")
        p("downloading")  # a repeated message is not repeated
        p.update(1)
        p("unpacking")
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["guest: downloading", "guest: unpacking"]
    assert lines[2].startswith("guest: done in ") and len(lines) == 3


def test_environment_can_force_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_PROGRESS", "1")
    out = io.StringIO()
    with Progress(stream=out) as p:
        p("step")
    assert out.getvalue().splitlines()[0] == "step"


def test_used_as_a_callback_without_with() -> None:
    out = io.StringIO()
    p = Progress("cb", stream=out, enabled=True)
    assert p.elapsed == 0 and not p.closed
    p("first")  # the first message starts it
    p.close()
    p.close()  # closing twice is harmless
    p("late")  # and later messages are ignored
    assert out.getvalue().splitlines()[0] == "cb: first" and len(out.getvalue().splitlines()) == 2
    assert p.closed and p.elapsed > 0


def test_a_closed_stream_does_not_break_the_operation() -> None:
    out = io.StringIO()
    p = Progress("x", stream=out, enabled=True)
    out.close()
    with p:
        p("message")


class FakeHandle:
    def __init__(self, shown: list[str], markup: str) -> None:
        self.shown = shown
        shown.append(markup)

    def update(self, markup: str) -> None:
        self.shown.append(markup)


def test_notebook_display(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(progress_mod, "notebook_available", lambda: True)
    monkeypatch.setattr(progress_mod, "_display", lambda markup: FakeHandle(shown, markup))
    monkeypatch.setattr(progress_mod, "_update", lambda handle, markup: handle.update(markup))
    with Progress("<b>guest</b>", total=4) as p:
        assert p.mode == "notebook"
        p.update(2, message="step <2>")
    assert "<progress" in shown[0] and "&lt;b&gt;guest&lt;/b&gt;" in shown[0]
    assert 'value="0.5000"' in shown[1] and "step &lt;2&gt;" in shown[1] and "<b>guest</b>" not in shown[1]
    assert "done in" in shown[-1] and "<progress" not in shown[-1]
    with pytest.raises(ValueError), Progress("spin"):
        raise ValueError
    assert "<progress " in shown[-2] and "value=" not in shown[-2]  # indeterminate: the browser animates it
    assert "failed after" in shown[-1]


def test_notebook_detection_outside_a_kernel() -> None:
    assert progress_mod.notebook_available() is False


def test_reporting_turns_an_argument_into_a_callback() -> None:
    seen: list[str] = []
    with reporting(seen.append, "x") as report:
        report("one")
    assert seen == ["one"]
    with reporting(False, "x") as report:
        assert isinstance(report, Progress) and report.mode == "silent"
    with reporting(None, "x") as report:
        assert isinstance(report, Progress)
    mine = Progress("mine", stream=io.StringIO(), enabled=True)
    with reporting(mine, "ignored") as report:
        assert report is mine


def test_quick_operations_leave_no_trace_with_a_delay() -> None:
    tty = Tty()
    with Progress("quick", stream=tty, delay=30, refresh=0.01) as p:
        p("a step")
    assert tty.text() == ""


def test_a_delayed_spinner_appears_then_is_erased_without_leave() -> None:
    tty = Tty()
    with Progress("slow", stream=tty, delay=0.05, refresh=0.01, leave=False):
        wait_until(lambda: "slow" in tty.text(), 5, "the spinner to appear after its delay")
    out = tty.text()
    assert out.endswith("\r\x1b[K") and "done in" not in out
    assert out.split("\r\x1b[K")[1].split("  ")[1] == "slow"


def test_notebook_display_erased_without_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(progress_mod, "notebook_available", lambda: True)
    monkeypatch.setattr(progress_mod, "_display", lambda markup: FakeHandle(shown, markup))
    monkeypatch.setattr(progress_mod, "_update", lambda handle, markup: handle.update(markup))
    with Progress("temporary", leave=False):
        pass
    assert "temporary" in shown[0] and shown[-1] == ""
