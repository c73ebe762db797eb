"""One authenticated vSphere API session: calls with a timeout, property reads, task waits, uploads.

Every property is read through ``PropertyCollector.RetrievePropertiesEx``, never through pyvmomi's
attribute access: an unset property then is simply absent (vcsim 0.24.2 drops the connection
when ``vm.snapshot`` is read on a VM without snapshots). Tasks are waited on by polling only
``info.state``, ``info.error`` and ``info.result`` with a deadline, never with pyvmomi's
``WaitForTask`` (which reads ``info.entity``; vcsim reports a snapshot there and pyvmomi fails).
"""

from __future__ import annotations

import functools
import http.client
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from xml.parsers.expat import ExpatError

import pyVim.connect
import pyVmomi

from vmctl.errors import BackendError, ErrorCode, OperationTimeout

__all__ = ["PC", "Session", "fault_code", "fault_name", "fault_text", "vim", "vmodl"]

log = logging.getLogger("vmctl.vsphere")
T = TypeVar("T")
# pyvmomi's generated classes are dynamic; typed as Any so that mypy --strict accepts their use.
vim: Any = pyVmomi.vim
vmodl: Any = pyVmomi.vmodl
_support: Any = pyVmomi.VmomiSupport
_connect: Any = pyVim.connect
PC = vmodl.query.PropertyCollector
_VERSION = re.compile(r"<version>\s*([^<\s]+)\s*</version>")
#: Transport failures: the call may or may not have reached the server.
_TRANSPORT = (http.client.HTTPException, ConnectionError, ssl.SSLError, OSError)


class Session:
    """A logged-in connection. ``timeout`` bounds every single HTTP exchange."""

    def __init__(
        self, *, host: str, port: int, user: str, password: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.context = context
        self.timeout = timeout
        self._password = password
        self._login_lock = threading.Lock()
        self.version = self._negotiate()
        self.si = self._connect()
        self.content = self.invoke("RetrieveContent", self.si.RetrieveContent)

    def __repr__(self) -> str:
        return f"<vsphere Session {self.user}@{self.host}:{self.port}>"

    # -- connecting ------------------------------------------------------------------------
    def _http(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout if timeout is not None else self.timeout
        )

    def _negotiate(self) -> str:
        """The newest API version both pyvmomi and the server speak (pyvmomi's own probe has no timeout)."""
        what = f"GET https://{self.host}:{self.port}/sdk/vimServiceVersions.xml"
        conn = self._http()
        try:
            conn.request("GET", "/sdk/vimServiceVersions.xml")
            response = conn.getresponse()
            body = response.read(1 << 20).decode("utf-8", "replace")
        except TimeoutError:
            raise OperationTimeout(what, self.timeout) from None
        except ssl.SSLCertVerificationError as exc:
            raise BackendError(
                f"the TLS certificate of {self.host}:{self.port} is not trusted ({exc.verify_message}); "
                "pass ca_file= with the server's CA, or verify_tls=False on a trusted network",
                command=what,
                code=ErrorCode.AUTH,
                native="certificate",
            ) from exc
        except _TRANSPORT as exc:
            raise BackendError(
                f"cannot reach {self.host}:{self.port}: {exc}", command=what, code=ErrorCode.CONNECTION
            ) from exc
        finally:
            conn.close()
        if response.status != 200:
            raise BackendError(
                f"{self.host}:{self.port} is not a vSphere API endpoint (HTTP {response.status})",
                command=what,
                status=response.status,
            )
        offered = set(_VERSION.findall(body))
        for version in _support.GetServiceVersions("vim25"):
            if _support.versionIdMap.get(version) in offered:
                return str(version)
        raise BackendError(f"{self.host} offers API versions {sorted(offered)}, none of which pyvmomi speaks")

    def _connect(self) -> Any:
        try:
            return _connect.Connect(
                host=self.host,
                port=self.port,
                user=self.user,
                pwd=self._password,
                version=self.version,
                sslContext=self.context,
                httpConnectionTimeout=self.timeout,
            )
        except vim.fault.InvalidLogin as exc:
            raise BackendError(
                f"{self.host} refused the login of {self.user!r}",
                command="Login",
                code=ErrorCode.AUTH,
                native="InvalidLogin",
            ) from exc
        except vmodl.MethodFault as exc:
            raise BackendError(
                f"login to {self.host} failed: {fault_text(exc)}",
                command="Login",
                code=fault_code(exc),
                native=fault_name(exc),
            ) from exc
        except TimeoutError:
            raise OperationTimeout(f"login to {self.host}", self.timeout) from None
        except _TRANSPORT as exc:
            raise BackendError(
                f"login to {self.host} failed: {exc}", command="Login", code=ErrorCode.CONNECTION
            ) from exc

    def _relogin(self) -> None:
        """Log in again on the same stub, so that managed objects already held stay usable."""
        with self._login_lock:
            log.info("vsphere: session on %s expired; logging in again", self.host)
            try:
                self.content.sessionManager.Login(self.user, self._password)
            except vim.fault.InvalidLogin as exc:
                raise BackendError(
                    f"{self.host} refused the login of {self.user!r}",
                    command="Login",
                    code=ErrorCode.AUTH,
                    native="InvalidLogin",
                ) from exc
            except TimeoutError:
                raise OperationTimeout(f"login to {self.host}", self.timeout) from None
            except _TRANSPORT as exc:
                raise BackendError(
                    f"login to {self.host} failed: {exc}", command="Login", code=ErrorCode.CONNECTION
                ) from exc

    def close(self) -> None:
        si, self.si = self.si, None
        if si is not None:
            _connect.Disconnect(si)

    @property
    def cookie(self) -> str:
        """The session cookie (``vmware_soap_session=...``) for HTTP requests outside SOAP."""
        return str(self.si._stub.cookie).split(";", 1)[0]

    # -- calling ---------------------------------------------------------------------------
    def invoke(self, what: str, call: Callable[[], T]) -> T:
        """Run one API call; vSphere faults pass through, transport failures become vmctl errors.

        An expired session is renewed once and the call repeated (the server refused it, so it
        did nothing). Calls are never repeated after a transport failure: it may have taken effect.
        """
        for attempt in (1, 2):
            try:
                return call()
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise
                self._relogin()
            except vmodl.MethodFault:
                raise
            except TimeoutError:
                raise OperationTimeout(f"{what} on {self.host}", self.timeout) from None
            except _TRANSPORT as exc:
                raise BackendError(
                    f"{what}: lost the connection to {self.host}:{self.port}: {exc!r}",
                    command=what,
                    code=ErrorCode.CONNECTION,
                ) from exc
            except (KeyError, TypeError, ValueError, ExpatError) as exc:
                if not _raised_in_pyvmomi(exc):
                    raise
                raise BackendError(
                    f"{what}: pyvmomi cannot read the answer of {self.host}: {type(exc).__name__}: {exc}",
                    command=what,
                    code=ErrorCode.PROTOCOL,
                ) from exc
        raise AssertionError("unreachable")

    def props(self, obj: Any, paths: Sequence[str]) -> dict[str, Any]:
        """Properties of one managed object; unset ones are absent from the result."""
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=obj, skip=False)],
            propSet=[PC.PropertySpec(type=type(obj), pathSet=list(paths), all=False)],
        )
        result = self.invoke(
            f"read {', '.join(paths)} of {obj._moId}",
            lambda: self.content.propertyCollector.RetrievePropertiesEx([spec], PC.RetrieveOptions()),
        )
        values: dict[str, Any] = {}
        if result is not None:
            for found in result.objects:
                for prop in found.propSet or ():
                    values[prop.name] = prop.val
        return values

    def collect(
        self, container: Any, kind: Any, paths: Sequence[str], recursive: bool = True
    ) -> list[tuple[Any, dict[str, Any]]]:
        """Properties of every object of type ``kind`` below ``container``, one round trip per page."""
        view = self.invoke(
            "CreateContainerView",
            lambda: self.content.viewManager.CreateContainerView(container, [kind], recursive),
        )
        try:
            spec = PC.FilterSpec(
                objectSet=[
                    PC.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)],
                    )
                ],
                propSet=[PC.PropertySpec(type=kind, pathSet=list(paths), all=False)],
            )
            collector = self.content.propertyCollector
            result = self.invoke(
                "RetrievePropertiesEx", lambda: collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
            )
            found: list[tuple[Any, dict[str, Any]]] = []
            while result is not None:
                for obj in result.objects:
                    found.append((obj.obj, {p.name: p.val for p in obj.propSet or ()}))
                token = result.token
                if not token:
                    break
                result = self.invoke(
                    "ContinueRetrievePropertiesEx", functools.partial(collector.ContinueRetrievePropertiesEx, token)
                )
            return found
        finally:
            try:
                self.invoke("DestroyView", view.DestroyView)
            except (vmodl.MethodFault, BackendError, OperationTimeout) as exc:
                log.debug("vsphere: destroying a container view failed: %s", exc)

    def wait_task(self, task: Any, timeout: float, what: str) -> Any:
        """Wait for ``task`` until ``timeout``; return its result or raise its fault.

        At the deadline the task is cancelled where the server allows it and
        :class:`OperationTimeout` is raised.
        """
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            info = self.props(task, ["info.state", "info.error", "info.result"])
            state = info.get("info.state")
            if state == "success":
                return info.get("info.result")
            if state == "error":
                error = info.get("info.error")
                # pyvmomi hands a LocalizedMethodFault over as the fault itself
                fault = error if isinstance(error, vmodl.MethodFault) else getattr(error, "fault", None)
                if isinstance(fault, vmodl.MethodFault):
                    raise fault
                raise BackendError(f"{what} failed: {error!r}", command=what)
            left = deadline - time.monotonic()
            if left <= 0:
                self._cancel(task)
                raise OperationTimeout(f"{what} (task {task._moId}, {state or 'no state'})", timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, 0.5)

    def _cancel(self, task: Any) -> None:
        try:
            self.invoke("CancelTask", task.CancelTask)
        except (vmodl.MethodFault, BackendError, OperationTimeout) as exc:
            log.info("vsphere: task %s could not be cancelled: %s", task._moId, fault_text(exc))

    def run_task(self, what: str, start: Callable[[], Any], timeout: float) -> Any:
        """Start a task and wait for it."""
        task = self.invoke(what, start)
        return self.wait_task(task, timeout, what)

    # -- datastore files over HTTP ---------------------------------------------------------
    def _folder_url(self, datacenter_path: str, datastore: str, path: str) -> str:
        query = urllib.parse.urlencode({"dcPath": datacenter_path, "dsName": datastore})
        return "/folder/" + urllib.parse.quote(path) + "?" + query

    def file_exists(self, datacenter_path: str, datastore: str, path: str, size: int | None = None) -> bool:
        """Whether a datastore file exists (with ``size`` bytes, if given)."""
        what = f"HEAD [{datastore}] {path}"
        conn = self._http()
        try:
            conn.request("HEAD", self._folder_url(datacenter_path, datastore, path), headers={"Cookie": self.cookie})
            response = conn.getresponse()
            response.read()
        except TimeoutError:
            raise OperationTimeout(what, self.timeout) from None
        except _TRANSPORT as exc:
            raise BackendError(f"{what}: {exc}", command=what, code=ErrorCode.CONNECTION) from exc
        finally:
            conn.close()
        if response.status == 404:
            return False
        if response.status != 200:
            raise BackendError(
                f"{what}: HTTP {response.status} {response.reason}", command=what, status=response.status
            )
        if size is None:
            return True
        length = response.getheader("Content-Length")
        return length is None or int(length) == size

    def upload(self, datacenter_path: str, datastore: str, path: str, source: Path | bytes, timeout: float) -> None:
        """PUT a local file (or bytes) to a datastore path; ``timeout`` bounds each socket operation."""
        what = f"PUT [{datastore}] {path}"
        conn = self._http(timeout)
        stream: BinaryIO | None = None
        try:
            if isinstance(source, bytes):
                body: bytes | BinaryIO = source
                length = len(source)
            else:
                stream = open(source, "rb")
                body = stream
                length = source.stat().st_size
            headers = {
                "Cookie": self.cookie,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
            }
            conn.request("PUT", self._folder_url(datacenter_path, datastore, path), body=body, headers=headers)
            response = conn.getresponse()
            text = response.read(4096).decode("utf-8", "replace")
        except TimeoutError:
            raise OperationTimeout(what, timeout) from None
        except _TRANSPORT as exc:
            raise BackendError(f"{what}: {exc}", command=what, code=ErrorCode.CONNECTION) from exc
        finally:
            if stream is not None:
                stream.close()
            conn.close()
        if response.status not in (200, 201, 204):
            raise BackendError(
                f"{what}: HTTP {response.status} {response.reason}", command=what, status=response.status, stderr=text
            )

    def download(self, datacenter_path: str, datastore: str, path: str, limit: int, timeout: float) -> bytes:
        """GET a datastore file, at most ``limit`` bytes (more is a BackendError); ``timeout``
        bounds each socket operation."""
        what = f"GET [{datastore}] {path}"
        conn = self._http(timeout)
        try:
            conn.request("GET", self._folder_url(datacenter_path, datastore, path), headers={"Cookie": self.cookie})
            response = conn.getresponse()
            data = response.read(limit + 1)
        except TimeoutError:
            raise OperationTimeout(what, timeout) from None
        except _TRANSPORT as exc:
            raise BackendError(f"{what}: {exc}", command=what, code=ErrorCode.CONNECTION) from exc
        finally:
            conn.close()
        if response.status != 200:
            raise BackendError(
                f"{what}: HTTP {response.status} {response.reason}", command=what, status=response.status
            )
        if len(data) > limit:
            raise BackendError(f"{what}: larger than {limit} bytes", command=what)
        return data


def _raised_in_pyvmomi(exc: BaseException) -> bool:
    """Whether ``exc`` comes from pyvmomi's own code (a response it could not deserialize)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and ("pyVmomi" in last or "pyexpat" in last)


#: Fault classes in vmctl's vocabulary, checked in order with isinstance (subclasses first).
_FAULT_CODES: tuple[tuple[str, ErrorCode], ...] = (
    ("vim.fault.FileLocked", ErrorCode.BUSY),
    ("vim.fault.TaskInProgress", ErrorCode.BUSY),
    ("vim.fault.ConcurrentAccess", ErrorCode.BUSY),
    ("vim.fault.ResourceInUse", ErrorCode.BUSY),
    ("vim.fault.InvalidLogin", ErrorCode.AUTH),
    ("vmodl.fault.SecurityError", ErrorCode.AUTH),  # NoPermission, NotAuthenticated
    ("vim.fault.ToolsUnavailable", ErrorCode.GUEST),
    ("vim.fault.GuestOperationsUnavailable", ErrorCode.GUEST),
    ("vim.fault.InvalidState", ErrorCode.INVALID_STATE),  # InvalidPowerState, InvalidHostState, ...
    ("vmodl.fault.ManagedObjectNotFound", ErrorCode.NOT_FOUND),
    ("vim.fault.NotFound", ErrorCode.NOT_FOUND),
    ("vim.fault.FileNotFound", ErrorCode.NOT_FOUND),
    ("vim.fault.DuplicateName", ErrorCode.EXISTS),
    ("vim.fault.AlreadyExists", ErrorCode.EXISTS),
    ("vim.fault.FileAlreadyExists", ErrorCode.EXISTS),
    ("vmodl.fault.NotSupported", ErrorCode.UNSUPPORTED),
    ("vmodl.fault.NotImplemented", ErrorCode.UNSUPPORTED),
    ("vmodl.fault.MethodNotFound", ErrorCode.UNSUPPORTED),
    ("vmodl.fault.InvalidArgument", ErrorCode.INVALID_ARGUMENT),
    ("vmodl.fault.InvalidRequest", ErrorCode.INVALID_ARGUMENT),
    ("vim.fault.InvalidName", ErrorCode.INVALID_ARGUMENT),
    ("vim.fault.VmConfigFault", ErrorCode.INVALID_ARGUMENT),
    ("vim.fault.NoDiskSpace", ErrorCode.RESOURCE),
    ("vim.fault.InsufficientResourcesFault", ErrorCode.RESOURCE),
    ("vim.fault.FileFault", ErrorCode.IO),
    ("vim.fault.Timedout", ErrorCode.TIMEOUT),
    ("vmodl.fault.HostCommunication", ErrorCode.CONNECTION),  # HostNotConnected, HostNotReachable
    ("vmodl.fault.SystemError", ErrorCode.INTERNAL),
)


def _fault_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    return getattr(vim.fault if module == "vim.fault" else vmodl.fault, name, None)


def fault_code(fault: BaseException) -> ErrorCode:
    """The :class:`ErrorCode` of a vSphere fault, told by its class (never by its message)."""
    for path, code in _FAULT_CODES:
        cls = _fault_class(path)
        if cls is not None and isinstance(fault, cls):
            return code
    return ErrorCode.UNKNOWN


def fault_name(fault: BaseException) -> str:
    """The vSphere type name of a fault (``InvalidPowerState``), else the Python class name."""
    return str(getattr(fault, "_wsdlName", type(fault).__name__))


def fault_text(fault: BaseException) -> str:
    """``Name: message`` for a fault (vcsim's messages are Go type names, so the name comes first)."""
    msg = getattr(fault, "msg", None) or ""
    if not msg and not isinstance(fault, vmodl.MethodFault):
        msg = str(fault)
    name = fault_name(fault)
    return f"{name}: {msg}" if msg and msg != name else name
