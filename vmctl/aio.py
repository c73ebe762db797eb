"""Running asyncio code from synchronous code, also where an event loop already runs.

vmctl's API is synchronous, while some clients (qemu.qmp) are asyncio-only. Calling
``asyncio.run`` fails inside Jupyter, whose kernel already runs a loop in the main thread, so
vmctl keeps one private event loop in a daemon thread and submits coroutines to it.

>>> import asyncio
>>> from vmctl.aio import run_sync
>>> async def answer() -> int:
...     await asyncio.sleep(0)
...     return 42
>>> run_sync(answer(), timeout=5)
42
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from vmctl.errors import OperationTimeout

__all__ = ["loop", "run_sync"]

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """vmctl's private event loop, started on first use in a daemon thread."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            thread = threading.Thread(target=new.run_forever, name="vmctl-asyncio", daemon=True)
            thread.start()
            _loop = new
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float, what: str = "operation") -> T:
    """Run ``coro`` on vmctl's loop and return its result; cancel it at the deadline."""
    future = asyncio.run_coroutine_threadsafe(coro, loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise OperationTimeout(what, timeout) from None
