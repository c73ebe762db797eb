"""VMware's vCenter simulator (vcsim) for the vSphere backend's tests.

Debian's ``golang-github-vmware-govmomi-dev`` ships the simulator library but no ``vcsim`` program,
so :func:`build_vcsim` compiles the small main program in ``tests/vcsim/main.go`` offline (GOPATH
mode, Debian's Go sources; 13-35 s on 2 cores) and caches only the binary (26 MB) under
``~/.cache/vmctl/vcsim/<hash>/`` (the hash covers main.go and the Go version). :class:`Vcsim` runs
one server on 127.0.0.1 on a free port and stops it; :func:`vcsim_fixture` makes a pytest fixture
of it. The simulator is used unpatched.

Needs ``apt-get install golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["GOPATH_SYSTEM", "SOURCE", "Vcsim", "VcsimError", "build_vcsim", "cache_dir", "vcsim_fixture"]

SOURCE = Path(__file__).with_name("vcsim") / "main.go"
GOPATH_SYSTEM = "/usr/share/gocode"
PACKAGES = "golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev"
_IMPORT_PATH = "vmctl-vcsim"


class VcsimError(RuntimeError):
    """vcsim could not be built or started."""


def cache_dir() -> Path:
    """``$VMCTL_CACHE_DIR/vcsim``, else ``$XDG_CACHE_HOME/vmctl/vcsim``, else ``~/.cache/vmctl/vcsim``."""
    if os.environ.get("VMCTL_CACHE_DIR"):
        return Path(os.environ["VMCTL_CACHE_DIR"]) / "vcsim"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmctl" / "vcsim"


def _go() -> str:
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if go is None:
        raise VcsimError(f"'go' is not installed (apt-get install {PACKAGES})")
    if not (Path(GOPATH_SYSTEM) / "src/github.com/vmware/govmomi/simulator").is_dir():
        raise VcsimError(f"govmomi's simulator sources are not installed (apt-get install {PACKAGES})")
    return go


def _go_env(gopath: str, gocache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GO111MODULE": "off",  # module mode would try to download govmomi
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOPATH": f"{gopath}:{GOPATH_SYSTEM}",
            "GOCACHE": str(gocache),
            "CGO_ENABLED": "0",
            "LANG": "C",
            "LC_ALL": "C",
        }
    )
    return env


def build_vcsim(*, timeout: float = 900, force: bool = False) -> Path:
    """Return the path of a vcsim binary built from ``tests/vcsim/main.go``, building it if needed."""
    go = _go()
    source = SOURCE.read_bytes()
    version = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=True, env=_go_env("", Path("/"))
    ).stdout.strip()
    key = hashlib.sha256(source + b"\0" + version.encode()).hexdigest()[:16]
    root = cache_dir()
    target = root / key / "vcsim"
    if target.exists() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others reuse its result
        if target.exists() and not force:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vcsim-gopath-") as gopath:
            package = Path(gopath) / "src" / _IMPORT_PATH
            package.mkdir(parents=True)
            (package / "main.go").write_bytes(source)
            partial = target.with_name(f".vcsim.{os.getpid()}.tmp")
            try:
                result = subprocess.run(
                    [go, "build", "-o", str(partial), "."],
                    cwd=package,
                    env=_go_env(gopath, Path(gopath) / "go-build"),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                if result.returncode != 0:
                    raise VcsimError(f"building vcsim failed ({result.returncode}):\n{result.stderr}")
                os.replace(partial, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
    return target


class Vcsim:
    """One running simulator. Use as a context manager or call :meth:`start` and :meth:`stop`.

    ``model`` is ``"vpx"`` (a vCenter: a datacenter with a cluster of 3 hosts and a standalone host)
    or ``"esx"`` (one ESXi host). ``vms`` is the number of VMs per resource pool the model starts
    with. With ``username``/``password`` only that login is accepted (the password reaches vcsim
    through its environment, not its argv). ``delays`` slows SOAP methods down (name -> ms).
    """

    def __init__(
        self,
        *,
        model: str = "vpx",
        vms: int = 2,
        username: str | None = None,
        password: str | None = None,
        tls: bool = True,
        delays: Mapping[str, int] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30,
    ) -> None:
        self.model = model
        self.vms = vms
        self.username = username
        self.password = password
        self.tls = tls
        self.delays = dict(delays or {})
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self.cert_file: Path | None = None
        self.log_text = ""
        self._dir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def datastore_root(self) -> Path:
        """Where vcsim keeps its datastores' files (its private TMPDIR)."""
        assert self._dir is not None, "vcsim is not running"
        return self._dir / "tmp"

    def argv(self, binary: Path) -> list[str]:
        args = [str(binary), "-model", self.model, "-listen", "127.0.0.1:0", "-vm", str(self.vms), "-stdin-watch"]
        if self.tls:
            assert self._dir is not None
            self.cert_file = self._dir / "cert.pem"
            args += ["-cert-out", str(self.cert_file)]
        else:
            args.append("-no-tls")
        if self.username is not None:
            args += ["-username", self.username]
        if self.delays:
            args += ["-delay", ",".join(f"{method}={ms}" for method, ms in sorted(self.delays.items()))]
        return args + self.extra_args

    def start(self) -> Vcsim:
        binary = build_vcsim()
        self._dir = Path(tempfile.mkdtemp(prefix="vmctl-vcsim-"))
        (self._dir / "tmp").mkdir()
        env = dict(os.environ, TMPDIR=str(self._dir / "tmp"), LANG="C", LC_ALL="C")
        env.pop("VCSIM_PASSWORD", None)
        if self.username is not None:
            env["VCSIM_PASSWORD"] = self.password or ""
        log = open(self._dir / "vcsim.log", "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv(binary), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=self._dir
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise VcsimError(f"vcsim printed no URL within {self.start_timeout} s:\n{self._read_log()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise VcsimError(f"vcsim exited ({self.proc.wait()}) before it was ready:\n{self._read_log()}")
                line += chunk
        text = line.decode().strip()
        if not text.startswith("VCSIM-READY url="):
            raise VcsimError(f"unexpected first line from vcsim: {text!r}")
        self.url = text.split("=", 1)[1]
        hostport = self.url.split("://", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self._wait_answering(deadline)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this server's certificate."""
        assert self.cert_file is not None, "vcsim runs without TLS"
        return ssl.create_default_context(cafile=str(self.cert_file))

    def _wait_answering(self, deadline: float) -> None:
        scheme = "https" if self.tls else "http"
        about = f"{scheme}://{self.host}:{self.port}/about"
        context = self.ssl_context() if self.tls else None
        while True:
            try:
                with urllib.request.urlopen(about, timeout=5, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                problem: Exception = exc
            else:
                problem = VcsimError("no 200 from /about")
            if time.monotonic() > deadline:
                raise VcsimError(f"vcsim does not answer at {about}: {problem}\n{self._read_log()}")
            time.sleep(0.05)

    def _read_log(self) -> str:
        if self._dir is None:
            return self.log_text
        with contextlib.suppress(OSError):
            return (self._dir / "vcsim.log").read_text(errors="replace")
        return ""

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (end of stdin, then SIGTERM, then SIGKILL) and delete its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if proc.stdout is not None:
                proc.stdout.close()
        if self._dir is not None:
            self.log_text = self._read_log()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def connect(self, **options: Any) -> Any:
        """``vmctl.connect("vsphere", ...)`` to this server (its certificate trusted); ``options`` override."""
        import vmctl

        values: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.username or "user"}
        if self.cert_file is not None:
            values["ca_file"] = self.cert_file
        if not {"password", "password_env", "password_file"} & set(options):
            values["password"] = self.password if self.username is not None else "pass"
        values.update(options)
        return vmctl.connect("vsphere", **values)

    def __enter__(self) -> Vcsim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def vcsim_fixture(scope: str = "module", **options: Any) -> Callable[..., Iterator[Vcsim]]:
    """A pytest fixture yielding a running :class:`Vcsim` built with ``options``.

    In a test module: ``vcsim = vcsim_fixture()``; then take ``vcsim`` as an argument.
    """

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def fixture() -> Iterator[Vcsim]:
        with Vcsim(**options) as server:
            yield server

    return fixture  # type: ignore[no-any-return]
