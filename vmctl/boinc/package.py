"""``vmctl-boinc package``: the app version a BOINC project installs, and its anonymous-platform twin.

Given a job file, its disk image and the other files the job opens (kernel, initrd, inputs), it
writes into ``DIR``

- the files under physical names that carry the version (BOINC never replaces a file whose name
  it already has): ``vmctl-boinc_<version>_<platform>`` (the frozen adapter, the main program),
  ``<name>_<version><suffix>`` for the job file and each other file;
- ``version.xml``, which a project's ``update_versions`` reads when ``DIR`` is copied to
  ``apps/APP/VERSION/PLATFORM/``: each file with its logical (open) name, ``<gzip/>`` on the
  large ones (the server stores and sends them compressed, clients 7.0 and later uncompress
  them) and the ``<api_version>`` that makes the client use ``boinc_mmap_file``;
- ``app_info.xml``, the same app version for the anonymous platform: copy ``DIR``'s files into
  ``projects/PROJECT/`` of one client to run the app without a project server.

Everything XML is built with ElementTree; the names the job opens are checked against what is
given, so a package never lacks a file its job needs.

>>> from pathlib import Path
>>> physical_name("disk.qcow2", 103)
'disk_103.qcow2'
"""

from __future__ import annotations

import os
import shutil
import stat
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmctl.boinc.errors import BoincError
from vmctl.boinc.job import JOB_FILES, JobError, load_job

__all__ = [
    "API_VERSION",
    "DEFAULT_PLATFORM",
    "GZIP_THRESHOLD",
    "AppVersion",
    "PackageError",
    "physical_name",
    "write_app_version",
]

API_VERSION = "7.20.0"
"""The BOINC API the adapter speaks (>= 6.0: shared memory through ``boinc_mmap_file``)."""
DEFAULT_PLATFORM = "x86_64-pc-linux-gnu"
GZIP_THRESHOLD = 1 << 20
"""Files at least this large are marked ``<gzip/>`` in version.xml."""


class PackageError(BoincError):
    """The app version cannot be written as asked (a missing or unreadable file, a bad job)."""


@dataclass(frozen=True)
class AppVersion:
    """What :func:`write_app_version` wrote: the directory and physical -> logical names."""

    directory: Path
    main_program: str
    files: Mapping[str, str]


def physical_name(logical: str, version_num: int) -> str:
    """``logical`` with the version before its suffix (``disk.qcow2`` -> ``disk_103.qcow2``)."""
    name = Path(logical)
    suffixes = "".join(name.suffixes)
    stem = name.name[: -len(suffixes)] if suffixes else name.name
    return f"{stem}_{version_num}{suffixes}"


def _el(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _write_xml(path: Path, root: ET.Element) -> None:
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


def _regular(path: Path, what: str) -> Path:
    try:
        st = path.stat()
    except OSError as exc:
        raise PackageError(f"the {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PackageError(f"the {what} {path} is not a regular file")
    return path


def _place(source: Path, target: Path) -> None:
    """Hard-link a large file where possible (images are gigabytes); copy otherwise."""
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_app_version(
    out: Path,
    *,
    job: Path,
    bundle: Path,
    files: Mapping[str, Path],
    app: str = "vmctl",
    version_num: int = 100,
    platform: str = DEFAULT_PLATFORM,
    plan_class: str | None = None,
) -> AppVersion:
    """Write the app version of ``job`` into ``out`` (see the module's docstring).

    ``files`` maps the logical names the job opens (its image, kernel, initrd, inputs) to files.
    """
    try:
        parsed = load_job(_regular(Path(job), "job file"))
    except JobError as exc:
        raise PackageError(f"the job file: {exc}") from exc
    needed = [n for n in (parsed.image, parsed.kernel, parsed.initrd, *parsed.copy_to_shared) if n]
    missing = [n for n in needed if n not in files]
    if missing:
        raise PackageError(f"the job opens {', '.join(missing)}, which the package was not given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = f"vmctl-boinc_{version_num}_{platform}"
    _place(_regular(Path(bundle), "bundle"), out / main)
    (out / main).chmod(0o755)
    # The adapter looks for the job under one of JOB_FILES, whatever the file is called here.
    job_name = JOB_FILES[1] if Path(job).suffix == ".xml" else JOB_FILES[0]
    logical_to_source = {job_name: Path(job), **{k: Path(v) for k, v in files.items()}}
    physical: dict[str, str] = {}
    for logical, source in logical_to_source.items():
        if Path(logical).name != logical or logical in (".", ".."):
            raise PackageError(f"the logical name {logical!r} must be a plain file name")
        name = physical_name(logical, version_num)
        _place(_regular(source, f"file {logical!r}"), out / name)
        physical[name] = logical

    version = ET.Element("version")
    f = _el(version, "file")
    _el(f, "physical_name", main)
    _el(f, "main_program")
    for name, logical in physical.items():
        f = _el(version, "file")
        _el(f, "physical_name", name)
        _el(f, "logical_name", logical)
        if (out / name).stat().st_size >= GZIP_THRESHOLD:
            _el(f, "gzip")
    _el(version, "api_version", API_VERSION)
    _write_xml(out / "version.xml", version)

    info = ET.Element("app_info")
    a = _el(info, "app")
    _el(a, "name", app)
    _el(a, "user_friendly_name", app)
    f = _el(info, "file")
    _el(f, "name", main)
    _el(f, "executable")
    for name in physical:
        _el(_el(info, "file"), "name", name)
    av = _el(info, "app_version")
    for tag, text in (("app_name", app), ("version_num", version_num), ("platform", platform)):
        _el(av, tag, text)
    if plan_class:
        _el(av, "plan_class", plan_class)
    for tag, text in (("api_version", API_VERSION), ("avg_ncpus", 1), ("max_ncpus", 1)):
        _el(av, tag, text)
    ref = _el(av, "file_ref")
    _el(ref, "file_name", main)
    _el(ref, "main_program")
    for name, logical in physical.items():
        ref = _el(av, "file_ref")
        _el(ref, "file_name", name)
        _el(ref, "open_name", logical)
    _write_xml(out / "app_info.xml", info)
    return AppVersion(out, main, physical)
