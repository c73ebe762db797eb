"""Progress for long operations: a spinner or a bar in a terminal, a live display in Jupyter.

:class:`Progress` is a context manager and also a ``Callable[[str], None]``: pass it wherever
vmctl takes a ``progress`` callback (for example :func:`vmctl.testguest.ensure_test_guest`), and
each message it receives is shown next to the elapsed time::

    from vmctl.progress import Progress
    from vmctl.testguest import ensure_test_guest

    with Progress("building the test guest") as progress:
        guest = ensure_test_guest(progress=progress)

Where it draws is decided once, when it is made (``enabled=None``, the default):

* ``VMCTL_PROGRESS=0`` in the environment: nowhere;
* inside a Jupyter kernel (IPython with a display): an HTML display updated in place;
* when ``stream`` (default ``sys.stderr``) is a terminal: a line redrawn in place, a spinner
  with the elapsed time, or a bar when ``total`` is known;
* otherwise (a pipe, a file, CI logs): nowhere.

``enabled=False`` is always silent. ``enabled=True`` (or ``VMCTL_PROGRESS=1``) also reports when
the stream is not a terminal, one plain line per message, which suits log files.

>>> import io
>>> out = io.StringIO()
>>> with Progress("copying", total=4, stream=out) as p:   # not a terminal: silent
...     p.update(4)
>>> out.getvalue()
''
>>> with Progress("copying", stream=out, enabled=True) as p:
...     p("step one")
>>> print(out.getvalue(), end="")
copying: step one
copying: done in ... s
"""

from __future__ import annotations

import html
import importlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal, TextIO

__all__ = ["Mode", "Progress", "ProgressArg", "notebook_available", "reporting"]

Mode = Literal["terminal", "notebook", "lines", "silent"]
#: What functions that report progress accept: None (automatic), False (silent),
#: True (always report), or a callback that receives each message.
ProgressArg = bool | Callable[[str], None] | None

ENV = "VMCTL_PROGRESS"
_SPINNER_UNICODE = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_SPINNER_ASCII = "|/-\\"
_CLEAR_LINE = "\r\x1b[K"


def notebook_available() -> bool:
    """True inside a Jupyter kernel, where IPython can show and update rich displays."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    if shell is None:
        return False
    return type(shell).__name__ == "ZMQInteractiveShell" or "IPKernelApp" in getattr(shell, "config", {})


def _display(obj_html: str) -> Any:
    """Show HTML in the notebook; return a handle whose ``update`` replaces it."""
    display_mod = importlib.import_module("IPython.display")
    return display_mod.display(display_mod.HTML(obj_html), display_id=True)


def _update(handle: Any, obj_html: str) -> None:
    display_mod = importlib.import_module("IPython.display")
    handle.update(display_mod.HTML(obj_html))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _choose_mode(enabled: bool | None, stream: TextIO) -> Mode:
    if enabled is False:
        return "silent"
    if enabled is None:
        env = os.environ.get(ENV, "").strip().lower()
        if env in ("0", "false", "no", "off"):
            return "silent"
        if env in ("1", "true", "yes", "on"):
            enabled = True
    if notebook_available() and stream in (sys.stderr, sys.stdout):
        return "notebook"
    if _is_tty(stream):
        return "terminal"
    return "lines" if enabled else "silent"


def _unicode_ok(stream: TextIO) -> bool:
    encoding = getattr(stream, "encoding", None) or ""
    return encoding.lower().replace("-", "") in ("utf8", "utf16", "utf32")


class Progress:
    """Reports one long operation. Use as a context manager or call it with messages.

    ``total``: the amount of work when known (a bar is drawn; advance it with :meth:`update`);
    ``unit``: shown after the amounts (``"B"`` formats them as bytes);
    ``refresh``: seconds between redraws of the spinner in a terminal;
    ``delay``: in a terminal, draw nothing until the operation has taken this long (so quick
    operations leave no trace);
    ``leave``: keep a final "done in ..." line (True) or erase the display when done (False).
    """

    def __init__(
        self,
        description: str = "",
        total: float | None = None,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        unit: str = "",
        refresh: float = 0.1,
        delay: float = 0.0,
        leave: bool = True,
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.message = ""
        self.refresh = refresh
        self.delay = delay
        self.leave = leave
        self._drawn = False
        self._stream: TextIO = stream if stream is not None else sys.stderr
        self.mode: Mode = _choose_mode(enabled, self._stream)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self._ended: float | None = None
        self._frame = 0
        self._handle: Any = None
        self._last_html = 0.0
        unicode = _unicode_ok(self._stream)
        self._spinner = _SPINNER_UNICODE if unicode else _SPINNER_ASCII
        self._bar_chars = ("█", "░") if unicode else ("#", "-")
        self._marks = ("✓", "✗") if unicode else ("ok", "FAILED")

    # -- public --------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the start (0 before it)."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    @property
    def closed(self) -> bool:
        return self._ended is not None

    def start(self) -> Progress:
        """Start the clock and show the display (done by ``with`` and by the first update)."""
        with self._lock:
            if self._started is not None:
                return self
            self._started = time.monotonic()
            if self.mode == "terminal":
                if self.delay <= 0:
                    self._draw_line()
                self._thread = threading.Thread(target=self._spin, name="vmctl-progress", daemon=True)
                self._thread.start()
            elif self.mode == "notebook":
                self._handle = _display(self._html())
                self._last_html = time.monotonic()
        return self

    def __call__(self, message: str) -> None:
        """Show ``message`` as the current step: this makes a Progress a progress callback."""
        self.update(0, message=message)

    def update(
        self,
        advance: float = 1,
        *,
        message: str | None = None,
        completed: float | None = None,
        total: float | None = None,
    ) -> None:
        """Advance by ``advance`` (or set ``completed``), and/or change the message or total."""
        self.start()
        with self._lock:
            if self._ended is not None:
                return
            if total is not None:
                self.total = total
            if completed is not None:
                self.completed = completed
            else:
                self.completed += advance
            changed = message is not None and message != self.message
            if message is not None:
                self.message = message
            if self.mode == "terminal":
                self._draw_line()
            elif self.mode == "lines" and changed:
                self._write(f"{self._prefix()}{self.message}\n")
            elif self.mode == "notebook" and (changed or time.monotonic() - self._last_html >= self.refresh):
                _update(self._handle, self._html())
                self._last_html = time.monotonic()

    def close(self, ok: bool = True) -> None:
        """Stop and leave one final line: done (``ok``) or failed, with the time taken."""
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()
            if self._ended is not None:
                return
            self._ended = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            verdict = f"done in {self.elapsed:.2f} s" if ok else f"failed after {self.elapsed:.2f} s"
            if self.mode == "terminal" and self._drawn:
                mark = self._marks[0] if ok else self._marks[1]
                self._write(f"{_CLEAR_LINE}{mark} {self._prefix()}{verdict}\n" if self.leave else _CLEAR_LINE)
            elif self.mode == "lines":
                self._write(f"{self._prefix()}{verdict}\n")
            elif self.mode == "notebook":
                _update(self._handle, self._html(final=verdict, ok=ok) if self.leave else "")

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc_type is None)

    # -- drawing -------------------------------------------------------------------------------
    def _prefix(self) -> str:
        return f"{self.description}: " if self.description else ""

    def _amounts(self) -> str:
        if self.unit == "B":
            from vmctl.display import format_bytes

            done = format_bytes(self.completed)
            return done if self.total is None else f"{done}/{format_bytes(self.total)}"
        done = f"{self.completed:g}"
        return (done if self.total is None else f"{done}/{self.total:g}") + (f" {self.unit}" if self.unit else "")

    def _fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.completed / self.total))

    def _text(self) -> str:
        parts = []
        fraction = self._fraction()
        if fraction is None:
            parts.append(self._spinner[self._frame % len(self._spinner)])
            if self.description:
                parts.append(self.description)
        else:
            full, empty = self._bar_chars
            width = 24
            filled = round(fraction * width)
            if self.description:
                parts.append(self.description)
            parts.append(full * filled + empty * (width - filled))
            parts.append(f"{fraction * 100:3.0f}% {self._amounts()}")
        if self.message:
            parts.append(self.message)
        parts.append(f"{self.elapsed:.1f} s")
        return "  ".join(parts)

    def _draw_line(self) -> None:
        if self.elapsed < self.delay:
            return
        self._drawn = True
        columns = shutil.get_terminal_size((80, 24)).columns
        self._write(_CLEAR_LINE + self._text()[: max(columns - 1, 10)])

    def _spin(self) -> None:
        while not self._stop.wait(self.refresh):
            with self._lock:
                if self._ended is not None:
                    return
                self._frame += 1
                self._draw_line()

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed stream must not break the operation reported on
            pass

    def _html(self, final: str | None = None, ok: bool = True) -> str:
        desc = f"<b>{html.escape(self.description)}</b> " if self.description else ""
        if final is not None:
            colour = "#1a7f37" if ok else "#cf222e"
            mark = "&#10003;" if ok else "&#10007;"
            badge = f'<span style="color:{colour}">{mark}</span>'
            return f'<div class="vmctl-progress">{badge} {desc}{html.escape(final)}</div>'
        fraction = self._fraction()
        if fraction is None:
            bar = '<progress style="width:12em"></progress>'
            amounts = ""
        else:
            bar = f'<progress style="width:12em" value="{fraction:.4f}" max="1"></progress>'
            amounts = f" {fraction * 100:.0f}% {html.escape(self._amounts())}"
        message = f" {html.escape(self.message)}" if self.message else ""
        return (
            f'<div class="vmctl-progress">{bar} {desc}{amounts}{message} '
            f'<span style="color:#57606a">{self.elapsed:.1f} s</span></div>'
        )


@contextmanager
def reporting(progress: ProgressArg, description: str, total: float | None = None) -> Iterator[Callable[[str], None]]:
    """Turn a ``progress`` argument into a callback for the duration of an operation.

    ``None`` shows a :class:`Progress` where one can be seen, ``False`` reports nothing,
    ``True`` always reports, and a callable receives the messages itself (nothing else is drawn).

    >>> with reporting(False, "waiting") as report:
    ...     report("still waiting")
    >>> seen = []
    >>> with reporting(seen.append, "waiting") as report:
    ...     report("booted")
    >>> seen
    ['booted']
    """
    if callable(progress) and not isinstance(progress, bool):
        yield progress
        return
    with Progress(description, total, enabled=progress) as bar:
        yield bar
