"""``init_data.xml``: what the BOINC client tells an app about its task, read once at start.

The client rewrites the file before every start of the app and before sending
``<reread_app_info/>``. Unknown elements are ignored; numbers the client writes with ``%f``.

>>> text = '''<app_init_data>
... <app_name>probe</app_name><result_name>wu_0_0</result_name><slot>3</slot>
... <client_pid>1234</client_pid><wu_cpu_time>12.500000</wu_cpu_time>
... <checkpoint_period>60.000000</checkpoint_period><shm_key>-1</shm_key>
... <host_info><p_ncpus>2</p_ncpus><m_nbytes>25769803776.000000</m_nbytes></host_info>
... </app_init_data>'''
>>> data = parse_init_data(text)
>>> data.result_name, data.slot, data.client_pid, data.wu_cpu_time, data.shm_key, data.host_ncpus
('wu_0_0', 3, 1234, 12.5, -1, 2)
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.boinc._xmlsafe import XmlRefused, parse_xml
from vmctl.boinc.errors import BoincError

__all__ = ["INIT_DATA_FILE", "InitData", "InitDataError", "parse_init_data", "read_init_data"]

INIT_DATA_FILE = "init_data.xml"
_MAX_SIZE = 1 << 20


class InitDataError(BoincError):
    """``init_data.xml`` is missing or not readable."""


@dataclass(frozen=True)
class InitData:
    """The fields of ``init_data.xml`` the adapter uses (defaults are the client's)."""

    app_name: str = ""
    wu_name: str = ""
    result_name: str = ""
    project_dir: str = ""
    boinc_dir: str = ""
    slot: int = 0
    client_pid: int = 0
    shm_key: int | None = None
    wu_cpu_time: float = 0.0
    starting_elapsed_time: float = 0.0
    checkpoint_period: float = 60.0
    ncpus: float = 1.0
    fraction_done_start: float = 0.0
    fraction_done_end: float = 1.0
    rsc_fpops_est: float = 0.0
    rsc_memory_bound: float = 0.0
    rsc_disk_bound: float = 0.0
    computation_deadline: float = 0.0
    host_ncpus: int | None = None
    host_memory_bytes: float | None = None
    cpu_usage_limit: float | None = None
    leave_apps_in_memory: bool | None = None
    http_proxy: str | None = None
    plan_class: str = ""
    no_priority_change: bool = False
    """The volunteer runs apps at regular priority (cc_config's ``no_priority_change``)."""
    """The app version's plan class (a ``vbox*`` one: the client does not throttle the task)."""
    vm_extensions_disabled: bool = False
    """The client saw a VM app fail for want of hardware virtualization on this host."""
    """``host:port`` of the HTTP proxy the volunteer configured, if any."""
    # the account, for vboxwrapper's CERN data format on the floppy (see _bootmedia.py)
    user_name: str = ""
    authenticator: str = field(default="", repr=False)
    userid: int = 0
    hostid: int = 0
    user_total_credit: float = 0.0
    host_total_credit: float = 0.0


def _text(root: ET.Element, path: str) -> str | None:
    el = root.find(path)
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _float(root: ET.Element, path: str, default: float) -> float:
    raw = _text(root, path)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InitDataError(f"<{path}> is not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise InitDataError(f"<{path}> is not a finite number: {raw!r}")
    return value


def _int(root: ET.Element, path: str) -> int | None:
    raw = _text(root, path)
    if raw is None or raw == "":
        return None
    try:
        return int(float(raw))
    except (ValueError, OverflowError):  # OverflowError: inf, nan
        raise InitDataError(f"<{path}> is not an integer: {raw!r}") from None


def _parse_xml(text: str) -> ET.Element:
    try:
        return parse_xml(text)
    except XmlRefused as first:
        # Project preferences are copied verbatim from the project's server and are the one part
        # that may not be well-formed; nothing the adapter needs is in them.
        stripped = re.sub(r"<project_preferences>.*?</project_preferences>", "", text, flags=re.S)
        if stripped == text or "DTD" in str(first):
            raise InitDataError(f"init_data.xml: {first}") from None
        try:
            return parse_xml(stripped)
        except XmlRefused as exc:
            raise InitDataError(f"init_data.xml: {exc}") from None


def parse_init_data(text: str) -> InitData:
    """Parse the text of an ``init_data.xml``."""
    root = _parse_xml(text)
    if root.tag != "app_init_data":
        raise InitDataError(f"init_data.xml's root element is <{root.tag}>, not <app_init_data>")
    proxy = None
    if root.find("proxy_info/use_http_proxy") is not None and _text(root, "proxy_info/http_server_name"):
        port = _int(root, "proxy_info/http_server_port") or 80
        proxy = f"{_text(root, 'proxy_info/http_server_name')}:{port}"
    leave = _int(root, "global_preferences/leave_apps_in_memory")
    limit = _float(root, "global_preferences/cpu_usage_limit", math.nan)
    return InitData(
        app_name=_text(root, "app_name") or "",
        wu_name=_text(root, "wu_name") or "",
        result_name=_text(root, "result_name") or "",
        project_dir=_text(root, "project_dir") or "",
        boinc_dir=_text(root, "boinc_dir") or "",
        slot=_int(root, "slot") or 0,
        client_pid=_int(root, "client_pid") or 0,
        shm_key=_int(root, "shm_key"),
        wu_cpu_time=_float(root, "wu_cpu_time", 0.0),
        starting_elapsed_time=_float(root, "starting_elapsed_time", 0.0),
        checkpoint_period=_float(root, "checkpoint_period", 60.0),
        ncpus=_float(root, "ncpus", 1.0),
        fraction_done_start=_float(root, "fraction_done_start", 0.0),
        fraction_done_end=_float(root, "fraction_done_end", 1.0),
        rsc_fpops_est=_float(root, "rsc_fpops_est", 0.0),
        rsc_memory_bound=_float(root, "rsc_memory_bound", 0.0),
        rsc_disk_bound=_float(root, "rsc_disk_bound", 0.0),
        computation_deadline=_float(root, "computation_deadline", 0.0),
        host_ncpus=_int(root, "host_info/p_ncpus"),
        host_memory_bytes=_float(root, "host_info/m_nbytes", 0.0) or None,
        cpu_usage_limit=None if math.isnan(limit) else limit,
        leave_apps_in_memory=None if leave is None else bool(leave),
        http_proxy=proxy,
        vm_extensions_disabled=bool(_int(root, "vm_extensions_disabled") or 0),
        user_name=_text(root, "user_name") or "",
        authenticator=_text(root, "authenticator") or "",
        userid=_int(root, "userid") or 0,
        hostid=_int(root, "hostid") or 0,
        user_total_credit=_float(root, "user_total_credit", 0.0),
        host_total_credit=_float(root, "host_total_credit", 0.0),
        plan_class=_text(root, "plan_class") or "",
        no_priority_change=bool(_int(root, "no_priority_change") or 0),
    )


def read_init_data(slot: Path) -> InitData:
    """Read ``<slot>/init_data.xml``; raises :class:`InitDataError` if it is missing or bad."""
    path = Path(slot) / INIT_DATA_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIZE + 1)
    except FileNotFoundError:
        raise InitDataError(f"{path} does not exist: vmctl-boinc must be started by a BOINC client") from None
    except OSError as exc:
        raise InitDataError(f"cannot read {path}: {exc}") from exc
    if len(data) > _MAX_SIZE:
        raise InitDataError(f"{path} is over {_MAX_SIZE} bytes")
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise InitDataError(f"{path} is empty")
    return parse_init_data(text)
