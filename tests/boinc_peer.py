"""A private, real BOINC client (Debian's ``boinc-client``) whose one project runs ``vmctl-boinc``.

:class:`BoincPeer` builds a data directory (see /work/shared/docs/boinc-client-peer.md): an
account and a project that nothing serves (``http://127.0.0.1:1/probe/``), an anonymous-platform
``app_info.xml`` whose main program is a small wrapper that execs this interpreter's
``python -m vmctl.boinc``, the job file and the VM's files as app-version files, and one
workunit/result per task. It starts ``boinc --dir D --gui_rpc_port P`` on a free loopback port,
drives it with ``boinccmd``, and always quits and then kills it (:meth:`close`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from vmctl.backend.ports import free_port

URL = "http://127.0.0.1:1/probe/"
PROJECT = "127.0.0.1_1_probe"
APP = "vmctl_probe"
APP_FILE = "vmctl-boinc-app"
PLATFORM = "x86_64-pc-linux-gnu"


def boinc_available() -> str | None:
    """None if the real client can run here, else why not."""
    for tool in ("boinc", "boinccmd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install boinc-client)"
    return None


def _el(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = str(text)
    return el


def _write_xml(path: Path, root: ET.Element) -> None:
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n")


@dataclass
class Task:
    """One workunit and its result. ``output``: the result's output file open name, if any."""

    name: str
    output: str | None = None
    suspended: bool = False

    @property
    def result(self) -> str:
        return f"{self.name}_0"

    @property
    def output_file(self) -> str:
        return f"{self.result}_r0"


@dataclass
class BoincPeer:
    root: Path
    app_files: Mapping[str, Path]
    """Open name -> file: the job file, disk image, kernel, ... (linked into the project dir)."""
    tasks: Sequence[Task]
    leave_apps_in_memory: bool = True
    app_dir: Path | None = None
    """A directory ``vmctl-boinc package`` wrote (its app name and version must be APP and 100);
    None: a wrapper script running this interpreter's ``python -m vmctl.boinc``."""
    checkpoint_period: float = 60.0
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    proc: subprocess.Popen[bytes] | None = None
    extra_log_flags: Sequence[str] = ()
    """More cc_config log flags, e.g. ``app_msg_receive`` (the client logs each trickle-up,
    upload and graphics message, and every status message)."""
    no_priority_change: bool = True
    """cc_config's option: apps (and their VMs) at regular priority, for speed on a shared machine."""
    plan_class: str = ""
    """The app version's plan class (``vbox64``: the client leaves CPU throttling to the app)."""
    cpu_usage_limit: float = 100
    app_args: str = ""
    """The app version's command line (vboxwrapper's ``--trickle X`` and the like)."""
    allowed_exits: dict[str, int] = field(default_factory=dict)
    """Result name -> how many exits of its app the test has caused (:meth:`expect_exit`). While
    a result is in here, :meth:`wait_for` fails at once, with the client's and the app's account,
    if its app exits more often: an adapter that dies or gives up on its own is a defect."""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def project_dir(self) -> Path:
        return self.data / "projects" / PROJECT

    @property
    def log_path(self) -> Path:
        return self.root / "client.log"

    def slot(self, n: int = 0) -> Path:
        return self.data / "slots" / str(n)

    # -- the data directory -------------------------------------------------------------------
    def build(self) -> BoincPeer:
        self.project_dir.mkdir(parents=True)
        now = time.time()
        account = ET.Element("account")
        _el(account, "master_url", URL)
        _el(account, "authenticator", "0123456789abcdef")
        _el(account, "project_name", "probe")
        _write_xml(self.data / f"account_{PROJECT}.xml", account)

        if self.app_dir is not None:
            self._install_app_dir(self.app_dir)
        else:
            self._write_wrapper_app()

        state = ET.Element("client_state")
        p = _el(state, "project")
        _el(p, "master_url", URL)
        _el(p, "project_name", "probe")
        _el(p, "dont_request_more_work")
        _el(p, "master_url_fetch_pending", 0)
        _el(p, "sched_rpc_pending", 0)
        for task in self.tasks:
            if task.output is not None:
                fi = _el(state, "file")
                _el(fi, "name", task.output_file)
                _el(fi, "max_nbytes", "1e7")
                _el(fi, "status", 0)
                _el(fi, "sticky")  # kept after the task (nothing uploads it), so a test can read it
            wu = _el(state, "workunit")
            for tag, text in (
                ("name", task.name),
                ("app_name", APP),
                ("version_num", 100),
                ("rsc_fpops_est", "1e12"),
                ("rsc_fpops_bound", "1e15"),
                ("rsc_memory_bound", "2e9"),
                ("rsc_disk_bound", "4e9"),
            ):
                _el(wu, tag, text)
            r = _el(state, "result")
            for tag, text in (
                ("name", task.result),
                ("wu_name", task.name),
                ("platform", PLATFORM),
                ("version_num", 100),
                ("state", 2),
                ("received_time", f"{now:f}"),
                ("report_deadline", f"{now + 30 * 86400:f}"),
            ):
                _el(r, tag, text)
            if self.plan_class:
                _el(r, "plan_class", self.plan_class)
            if task.output is not None:
                ref = _el(r, "file_ref")
                _el(ref, "file_name", task.output_file)
                _el(ref, "open_name", task.output)
            if task.suspended:
                _el(r, "suspended_via_gui")
        _el(state, "user_run_request", 1)
        _el(state, "user_gpu_request", 3)
        _el(state, "user_network_request", 3)
        _write_xml(self.data / "client_state.xml", state)

        cc = ET.Element("cc_config")
        flags = _el(cc, "log_flags")
        for flag in ("task", "task_debug", "cpu_sched", "app_msg_send", "checkpoint_debug", *self.extra_log_flags):
            _el(flags, flag, 1)
        opts = _el(cc, "options")
        for opt, value in (
            ("ncpus", 1),
            ("no_gpus", 1),
            ("skip_cpu_benchmarks", 1),
            ("no_info_fetch", 1),
            ("no_priority_change", int(self.no_priority_change)),
        ):
            _el(opts, opt, value)
        _write_xml(self.data / "cc_config.xml", cc)

        self.write_prefs()
        (self.data / "gui_rpc_auth.cfg").write_text(self.password)
        return self

    def _install_app_dir(self, app_dir: Path) -> None:
        """What ``vmctl-boinc package`` wrote: its files and its app_info.xml (not version.xml,
        which is the project server's)."""
        for source in app_dir.iterdir():
            if source.name == "version.xml" or not source.is_file():
                continue
            target = self.project_dir / source.name
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)

    def _write_wrapper_app(self) -> None:
        app = self.project_dir / APP_FILE
        app.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vmctl.boinc "$@"\n')
        app.chmod(0o755)
        physical: dict[str, str] = {}
        for open_name, source in self.app_files.items():
            name = f"v1_{open_name}"
            target = self.project_dir / name
            if Path(source).stat().st_size > 1 << 20:
                # A base image is never copied. Not a symlink: vmctl-boinc refuses project files
                # that lead out of the project directory.
                try:
                    os.link(Path(source).resolve(), target)
                except OSError:
                    shutil.copyfile(source, target)
            else:
                shutil.copyfile(source, target)
            physical[open_name] = name

        info = ET.Element("app_info")
        a = _el(info, "app")
        _el(a, "name", APP)
        _el(a, "user_friendly_name", APP)
        f = _el(info, "file")
        _el(f, "name", APP_FILE)
        _el(f, "executable")
        for name in physical.values():
            _el(_el(info, "file"), "name", name)
        av = _el(info, "app_version")
        for tag, text in (
            ("app_name", APP),
            ("version_num", 100),
            ("platform", PLATFORM),
            ("api_version", "7.20.0"),
            ("avg_ncpus", 1),
            ("max_ncpus", 1),
            ("flops", "1e9"),
        ):
            _el(av, tag, text)
        if self.app_args:
            _el(av, "cmdline", self.app_args)
        if self.plan_class:
            _el(av, "plan_class", self.plan_class)
        ref = _el(av, "file_ref")
        _el(ref, "file_name", APP_FILE)
        _el(ref, "main_program")
        for open_name, name in physical.items():
            ref = _el(av, "file_ref")
            _el(ref, "file_name", name)
            _el(ref, "open_name", open_name)
        _write_xml(self.project_dir / "app_info.xml", info)

    def write_prefs(self) -> None:
        """``global_prefs_override.xml`` from the peer's settings (``--read_global_prefs_override``
        makes a running client read it)."""
        prefs = ET.Element("global_preferences")
        pref_values: tuple[tuple[str, float], ...] = (
            ("run_on_batteries", 1),
            ("run_if_user_active", 1),
            ("run_gpu_if_user_active", 1),
            ("suspend_cpu_usage", 0),
            ("cpu_usage_limit", self.cpu_usage_limit),
            ("max_ncpus_pct", 100),
            ("leave_apps_in_memory", int(self.leave_apps_in_memory)),
            ("disk_interval", self.checkpoint_period),
            ("disk_max_used_gb", 1000),
            ("disk_max_used_pct", 100),
            ("disk_min_free_gb", 0.1),
            ("ram_max_used_busy_pct", 90),
            ("ram_max_used_idle_pct", 90),
            ("work_buf_min_days", 0),
            ("work_buf_additional_days", 0),
        )
        for tag, number in pref_values:
            _el(prefs, tag, number)
        _write_xml(self.data / "global_prefs_override.xml", prefs)

    # -- the client process -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the client and wait until it answers on its GUI RPC port.

        The port was free when it was chosen, but any process on the machine may bind it before
        the client does (the client then retries for 30 s and exits, while ``boinccmd`` would
        talk to the other process): the client is ready only when it is the one listening, and
        it is started again on another port if someone else holds the port."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for _ in range(3):
            self._spawn()
            if self.wait_for(self._port_owner, 30, f"the client to listen on port {self.port}") == "ours":
                self.wait_for(lambda: self._rpc_ready(), 30, "the client's GUI RPC port")
                return
            self.kill()
            taken, self.port = self.port, free_port()
            with open(self.log_path, "a") as log:
                log.write(f"(test) another process took the GUI RPC port {taken}: restarting on {self.port}\n")
        raise AssertionError(f"another process took the GUI RPC port three times:\n{self.log()[-3000:]}")

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                ["boinc", "--dir", str(self.data), "--gui_rpc_port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LANG": "C", "LC_ALL": "C"},
            )
        finally:
            log.close()

    def _port_owner(self) -> str | None:
        """ "ours" once the client listens on its port, "taken" if only another process does (the
        apps the client starts inherit its listening socket: they count as the client's)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"boinc exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        holders = {
            conn.pid
            for conn in psutil.net_connections("tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port
        }
        if self.proc.pid in holders:
            return "ours"
        # None: psutil could not map the socket to a process this time (its fds changed meanwhile)
        holders.discard(None)
        with contextlib.suppress(psutil.NoSuchProcess):
            holders -= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        return "taken" if holders else None

    def _rpc_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"boinc exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return self.cmd("--client_version", check=False).returncode == 0

    def cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["boinccmd", "--host", f"localhost:{self.port}", "--passwd", self.password, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LANG": "C", "LC_ALL": "C"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"boinccmd {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc

    def gui_rpc(self, request: str, timeout: float = 30) -> ET.Element:
        """One GUI RPC as the Manager makes it (``<get_results/>``, ...), after the md5 nonce
        handshake; returns the reply's root. Shows what ``boinccmd`` does not print, such as a
        task's ``web_graphics_url`` and ``remote_desktop_addr``."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:

            def call(body: str) -> ET.Element:
                conn.sendall(f"<boinc_gui_rpc_request>\n{body}\n</boinc_gui_rpc_request>\n\003".encode())
                data = b""
                while not data.endswith(b"\003"):
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        raise AssertionError(f"the client closed the GUI RPC connection after {data[-500:]!r}")
                    data += chunk
                return ET.fromstring(data[:-1].decode("utf-8", errors="replace"))  # noqa: S314 - our own client

            nonce = call("<auth1/>").findtext("nonce") or ""
            digest = hashlib.md5((nonce + self.password).encode()).hexdigest()  # noqa: S324 - BOINC's protocol
            if call(f"<auth2>\n<nonce_hash>{digest}</nonce_hash>\n</auth2>").find("authorized") is None:
                raise AssertionError("the client refused the GUI RPC password")
            return call(request)

    def active_task(self, task: Task) -> dict[str, str]:
        """The task's ``<active_task>`` fields as the Manager gets them (``get_results``)."""
        for result in self.gui_rpc("<get_results>\n<active_only>0</active_only>\n</get_results>").iter("result"):
            if result.findtext("name") == task.result:
                active = result.find("active_task")
                return {} if active is None else {el.tag: (el.text or "").strip() for el in active}
        return {}

    def task_op(self, task: Task, op: str) -> None:
        self.cmd("--task", URL, task.result, op)

    def tasks_info(self) -> dict[str, dict[str, str]]:
        """``boinccmd --get_tasks`` parsed: result name -> {field: value}."""
        out = self.cmd("--get_tasks").stdout
        tasks: dict[str, dict[str, str]] = {}
        current: dict[str, str] | None = None
        for line in out.splitlines():
            if re.match(r"^\d+\) -+$", line.strip()):
                current = {}
                continue
            if current is None or ":" not in line:
                continue
            key, _, value = line.strip().partition(":")
            current[key.strip()] = value.strip()
            if key.strip() == "name":
                tasks[value.strip()] = current
        return tasks

    def info(self, task: Task) -> dict[str, str]:
        return self.tasks_info().get(task.result, {})

    def app_process(self, task: Task, slot: int = 0) -> psutil.Process | None:
        """The task's running app as the host shows it, or None.

        ``boinccmd``'s PID alone cannot say that: the client sets it when it starts the app and
        never clears it (``ACTIVE_TASK::pid``), so after the app exits it names a process that is
        gone, and later perhaps an unrelated one. The app is the client's child, working in the
        task's slot, whose PID the client reports while the task executes. Signal the returned
        :class:`psutil.Process`, not its PID: psutil refuses a PID that was reused meanwhile."""
        info = self.info(task)
        if self.proc is None or info.get("active_task_state") != "EXECUTING" or not info.get("PID"):
            return None
        try:
            proc = psutil.Process(int(info["PID"]))
            if proc.ppid() != self.proc.pid or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if Path(proc.cwd()) != self.slot(slot):
                return None
        except psutil.Error:
            return None
        return proc

    def app_exits(self, task: Task) -> list[str]:
        """How each run of the task's app ended, from the client's log: one string per exit with
        the client's lines about it, e.g. ``"Process for wu_0_0 exited, status 9, task state 1 |
        process got signal 9 | task_state=UNINITIALIZED for wu_0_0 from handle_exited_app"``."""
        return self._exits(task.result)

    def _exits(self, result: str) -> list[str]:
        exits: list[list[str]] = []
        open_exit = False
        for line in self.log().splitlines():
            text = re.sub(r"^\S+ \S+ \[[^]]*\] (\[task\] )?", "", line)
            if text.startswith(f"Process for {result} exited"):
                exits.append([text])
                open_exit = True
            elif open_exit and text.startswith(("process ", f"Task {result} postponed", "task_state=")):
                exits[-1].append(text)
                open_exit = not text.startswith("task_state=")
        return [" | ".join(lines) for lines in exits]

    def why_not_running(self, task: Task, slot: int = 0) -> str:
        """What the client and the app said about the app's exits (for a failure message)."""
        try:
            stderr = (self.slot(slot) / "stderr.txt").read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            stderr = self.stderr_out(task)[-3000:]
        exits = "\n".join(self.app_exits(task)) or "(none logged)"
        return f"the client's info: {self.info(task)}\nexits in the client's log:\n{exits}\nstderr.txt:\n{stderr}"

    def expect_exit(self, task: Task) -> None:
        """The test is about to make the task's app exit once (kill, quit, finish, ...)."""
        self.allowed_exits[task.result] = self.allowed_exits.get(task.result, 0) + 1

    def check_exits(self) -> None:
        """Fail if an app exited more often than the test made it (see :attr:`allowed_exits`)."""
        for result, allowed in self.allowed_exits.items():
            exits = self._exits(result)
            if len(exits) > allowed:
                task = next(t for t in self.tasks if t.result == result)
                raise AssertionError(
                    f"the app of {result} exited on its own (exit {len(exits)}, the test caused {allowed}):\n"
                    + self.why_not_running(task)
                )

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_exits()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n--- client log:\n{self.log()[-4000:]}"
                )
            time.sleep(interval)

    def quit(self, timeout: float = 90) -> None:
        """``boinccmd --quit`` and wait for the client to exit (it sends <quit/> to the apps)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cmd("--quit", check=False)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        """Quit the client; kill it if it does not go."""
        try:
            self.quit(timeout=60)
        finally:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_out(self, task: Task) -> str:
        """The task's stderr as the client kept it in client_state.xml (after the task ended)."""
        try:
            root = ET.parse(self.data / "client_state.xml").getroot()  # noqa: S314 - our own client's file
        except (OSError, ET.ParseError):
            return ""
        for r in root.iter("result"):
            if r.findtext("name") == task.result:
                return r.findtext("stderr_out") or ""
        return ""
