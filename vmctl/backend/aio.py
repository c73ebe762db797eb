"""Running asyncio code from synchronous code, also where an event loop already runs.

vmctl's API is synchronous, while some clients (qemu.qmp) are asyncio-only. Calling
``asyncio.run`` fails inside Jupyter, whose kernel already runs a loop in the main thread, so
vmctl keeps one private event loop in a daemon thread and submits coroutines to it.

A forked child does not inherit the loop's thread: the loop is forgotten in the child right after
``fork`` and started afresh on its first use there. Calling :func:`run_sync` from a coroutine or
callback running on the loop itself would wait for the loop forever; it raises
:class:`LoopThreadError` instead.

>>> import asyncio
>>> from vmctl.backend.aio import run_sync
>>> async def answer() -> int:
...     await asyncio.sleep(0)
...     return 42
>>> run_sync(answer(), timeout=5)
42
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from vmctl.errors import OperationTimeout

__all__ = ["LoopThreadError", "loop", "on_loop_thread", "run_sync"]

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


class LoopThreadError(RuntimeError):
    """:func:`run_sync` was called on vmctl's event-loop thread, where it could only deadlock."""


def _forget_after_fork() -> None:
    """In a forked child: the loop's thread was not copied, and the lock may be held for good."""
    global _lock, _loop, _thread
    _lock = threading.Lock()
    _loop = None
    _thread = None


os.register_at_fork(after_in_child=_forget_after_fork)


def loop() -> asyncio.AbstractEventLoop:
    """vmctl's private event loop, started on first use in a daemon thread."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            thread = threading.Thread(target=new.run_forever, name="vmctl-asyncio", daemon=True)
            thread.start()
            _loop, _thread = new, thread
        return _loop


def on_loop_thread() -> bool:
    """True when called on vmctl's event-loop thread."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float, what: str = "operation") -> T:
    """Run ``coro`` on vmctl's loop and return its result; cancel it at the deadline."""
    if on_loop_thread():
        coro.close()
        raise LoopThreadError(
            f"{what}: vmctl's synchronous API was called from its own event-loop thread, where it would "
            "wait for itself forever; await the coroutine there instead"
        )
    future = asyncio.run_coroutine_threadsafe(coro, loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise OperationTimeout(what, timeout) from None
