"""One libvirt connection: opening and re-opening it, its event loop, and error translation.

libvirt delivers domain events (and notices a dead daemon) only while something runs its event
loop, so the first connection starts libvirt's default event loop implementation in a daemon
thread. Events bump per-domain counters under a condition variable: ``wait_for`` blocks on it
instead of polling.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import libvirt

from vmctl.errors import BackendError, ErrorCode, MachineNotFound

from ._errors import error_code, error_name

log = logging.getLogger("vmctl.libvirt")

T = TypeVar("T")

#: Failures to open a connection that are about the request, not about reaching the daemon.
_OPEN_REFUSALS = frozenset({ErrorCode.AUTH, ErrorCode.UNSUPPORTED, ErrorCode.INVALID_ARGUMENT})

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None

#: Error codes that mean the connection itself is gone, not that the call was refused.
_CONNECTION_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_ERR_AUTH_FAILED,
    }
)


def ensure_event_loop() -> None:
    """Start libvirt's default event loop in a daemon thread, once per process.

    Must run before the first connection is opened: a connection only uses the loop (for
    events, keepalives and noticing a closed socket) if one was registered when it opened.
    """
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        # libvirt's default handler prints every error to stderr, also those vmctl handles.
        libvirt.registerErrorHandler(_log_libvirt_error, None)
        try:
            libvirt.virEventRegisterDefaultImpl()
        except libvirt.libvirtError as exc:  # another library registered its own loop first
            log.warning("cannot register libvirt's event loop (%s); relying on the one registered", exc)
            _loop_thread = threading.current_thread()
            return

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # keep the loop alive whatever one iteration does
                    log.exception("libvirt event loop iteration failed")
                    time.sleep(0.1)

        _loop_thread = threading.Thread(target=run, name="vmctl-libvirt-events", daemon=True)
        _loop_thread.start()


def _log_libvirt_error(_ctx: Any, err: Any) -> None:
    log.debug("libvirt: %s", err[2] if isinstance(err, (list, tuple)) and len(err) > 2 else err)


def is_remote(uri: str) -> bool:
    """True if ``uri`` reaches another host (or this one over a network transport)."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport not in ("", "unix")


class Connection:
    """A self-healing libvirt connection shared by one Hypervisor and its Machines."""

    def __init__(self, uri: str, keepalive: tuple[int, int] = (5, 3)) -> None:
        self.uri = uri
        self.keepalive = keepalive
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._dead = False
        #: bumped at every (re)connection; cached domain handles carry it
        self.generation = 0
        self.changed = threading.Condition()
        self._changes: dict[str, int] = {}
        self._reboots: dict[str, int] = {}
        self._listeners: list[Callable[[str, int], None]] = []
        self._callback_ids: list[int] = []
        ensure_event_loop()
        self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        started = time.monotonic()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            number = exc.get_error_code()
            code = error_code(number)
            raise BackendError(
                f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                command=f"virConnectOpen({self.uri})",
                # whatever the reason (a missing socket is a system error), the daemon was not reached
                code=code if code in _OPEN_REFUSALS else ErrorCode.CONNECTION,
                native=error_name(number),
            ) from exc
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # drivers without a network connection (test://) have no keepalive
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass
        self._callback_ids = []
        for event_id, callback in (
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
            (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot),
        ):
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(None, event_id, callback, None))
            except libvirt.libvirtError as exc:
                log.warning("%s: no domain events (%s); waits will poll", self.uri, exc.get_error_message())
        self._conn = conn
        self._dead = False
        self.generation += 1
        log.debug("connected to %s in %.3f s (generation %d)", self.uri, time.monotonic() - started, self.generation)

    def get(self) -> libvirt.virConnect:
        """The live connection, re-opened first if it was lost (raises BackendError if it cannot be)."""
        with self._lock:
            conn = self._conn
            if conn is not None and not self._dead:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
            if conn is not None:
                log.warning("connection to %s was lost; reconnecting", self.uri)
                self._conn = None
                self._discard(conn)
            self._open()
            assert self._conn is not None
            return self._conn

    def _discard(self, conn: libvirt.virConnect) -> None:
        # Registered callbacks hold references to the connection: without deregistering them,
        # close() would leave it (and a remote transport's ssh process) open.
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._discard(self._conn)
                self._conn = None
            self._dead = True
        self._notify()

    # -- events --------------------------------------------------------------------------------
    def _notify(self, name: str | None = None, reboot: bool = False) -> None:
        with self.changed:
            if name is not None:
                self._changes[name] = self._changes.get(name, 0) + 1
                if reboot:
                    self._reboots[name] = self._reboots.get(name, 0) + 1
            self.changed.notify_all()

    def _on_lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        name = dom.name()
        log.debug("event: %s lifecycle %d/%d", name, event, detail)
        for listener in list(self._listeners):
            listener(name, event)
        self._notify(name)

    def _on_reboot(self, _conn: Any, dom: libvirt.virDomain, _opaque: Any) -> None:
        log.debug("event: %s reboot", dom.name())
        self._notify(dom.name(), reboot=True)

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("libvirt closed the connection to %s (reason %d)", self.uri, reason)
        self._dead = True
        self._notify()

    def add_listener(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(domain name, lifecycle event)`` from the event thread."""
        self._listeners.append(listener)

    def change_count(self, name: str) -> int:
        with self.changed:
            return self._changes.get(name, 0)

    def reboot_count(self, name: str) -> int:
        with self.changed:
            return self._reboots.get(name, 0)

    def wait_change(self, name: str, seen: int, timeout: float) -> bool:
        """Block until an event for ``name`` arrives after ``seen`` (or the connection drops)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self._changes.get(name, 0) == seen and not self._dead:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def wait_reboot(self, name: str, seen: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self._reboots.get(name, 0) == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    # -- calls ---------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[libvirt.virConnect], T], machine: str | None = None) -> T:
        """Run ``fn(connection)``; libvirt errors become vmctl errors."""
        conn = self.get()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            self.raise_error(exc, what, machine)

    def raise_error(self, exc: libvirt.libvirtError, what: str, machine: str | None = None) -> NoReturn:
        """Translate a libvirt error into MachineNotFound or BackendError (marking a dead connection)."""
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN and machine is not None:
            raise MachineNotFound(machine, "libvirt") from exc
        message = exc.get_error_message() or str(exc)
        kind = error_code(code)
        if code in _CONNECTION_ERRORS:
            alive = False
            conn = self._conn
            if conn is not None:
                try:
                    alive = bool(conn.isAlive())
                except libvirt.libvirtError:
                    alive = False
            if not alive:
                self._dead = True
                self._notify()
                message = f"connection to libvirt at {self.uri} lost: {message}"
                kind = ErrorCode.CONNECTION
        raise BackendError(f"{what} failed: {message}", command=what, code=kind, native=error_name(code)) from exc
