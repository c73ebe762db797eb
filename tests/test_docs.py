"""The documentation builds strictly, fails on broken references, and says what the code does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import vmctl
from vmctl.cli import EXIT_CODES
from vmctl.interface import ALLOWED_FROM
from vmctl.types import Capabilities, State

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "lifecycle/index.html", "cli/index.html", "boinc/index.html",
                 "third-party-backends/index.html", "notebooks/lifecycle.ipynb"):  # fmt: skip
        assert (site / page).is_file(), page
    api = (site / "reference" / "interface" / "index.html").read_text()
    assert "vmctl.interface.Machine.start" in api and "ALLOWED_FROM" in api
    # a docstring's :class:`...` role became a link to the documented class
    assert 'href="../types/#vmctl.types.Capabilities"' in api
    assert not (site / "dev").exists(), "docs/dev/ is for the developers, not the site"


def test_broken_references_fail_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("dev"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    if not (copy / "docs" / "boinc.md").exists():  # written separately; not what this test is about
        (copy / "docs" / "boinc.md").write_text("# BOINC\n")
    with (copy / "docs" / "cli.md").open("a") as f:
        f.write("\nSee [the missing page](no-such-page.md) and [`Gone`][vmctl.interface.Gone].\n")
    proc = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no-such-page.md" in output
    assert "vmctl.interface.Gone" in output


def _table(page: str, marker: str) -> list[list[str]]:
    text = (DOCS / page).read_text()
    block = text.split(f"<!-- {marker}")[1].split(f"<!-- end {marker}")[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.splitlines()]
    return [r for r in rows if len(r) > 1]


def test_lifecycle_table_matches_allowed_from() -> None:
    rows = _table("lifecycle.md", "allowed-from table")
    header = rows[0]
    states = [State(h) for h in header[1:6]]
    documented = {}
    for row in rows[2:]:
        verb = row[0].strip("`")
        documented[verb] = {s for s, cell in zip(states, row[1:6], strict=True) if cell == "✓"}
    assert documented == {verb: set(allowed) for verb, allowed in ALLOWED_FROM.items()}


_CAPABILITY_ROW = re.compile(r"\(`(\w+)`\)")


def declared_capabilities(column: str, tmp: Path) -> Capabilities:
    """What a backend declares. memory and qemu are asked through a real connection; the others
    need a hypervisor (or a simulator) to connect to, so their declaration is read from their code,
    with the one attribute it depends on (libvirt's driver, vmware's product)."""
    if column == "memory":
        with vmctl.connect("memory") as hv:
            return hv.capabilities
    if column == "qemu":
        with vmctl.connect("qemu", state_dir=tmp / "qemu") as hv:
            return hv.capabilities
    prop: Any
    if column == "libvirt":
        from vmctl_libvirt._hypervisor import LibvirtHypervisor

        return LibvirtHypervisor._probe_capabilities(SimpleNamespace(driver="QEMU"))  # type: ignore[arg-type]
    if column == "virtualbox":
        from vmctl_virtualbox._hypervisor import VirtualBoxHypervisor
        from vmctl_virtualbox._vboxmanage import VBoxManageTransport

        # the default transport, VBoxManage (screenshots depend on it), on a host with the
        # extension pack that provides VRDE (remote desktop depends on it; never asked here)
        transport = VBoxManageTransport("VBoxManage")
        transport._vrde = True
        prop, owner = VirtualBoxHypervisor.capabilities, SimpleNamespace(transport=transport)
    elif column in ("vmware", "vmware player"):
        from vmctl_vmware._hypervisor import VmwareHypervisor

        prop, owner = VmwareHypervisor.capabilities, SimpleNamespace(product=column.split()[-1].replace("vmware", "ws"))
    elif column == "vsphere":
        from vmctl_vsphere._hypervisor import VSphereHypervisor

        prop, owner = VSphereHypervisor.capabilities, None
    else:
        raise AssertionError(f"the docs name a backend column {column!r} that this test does not know")
    caps = prop.fget(owner)
    assert isinstance(caps, Capabilities)
    return caps


def test_capabilities_table_matches_the_backends(tmp_path: Path) -> None:
    rows = _table("lifecycle.md", "capabilities table")
    columns = rows[0][1:]
    assert set(columns) == {"memory", "qemu", "libvirt", "virtualbox", "vmware", "vmware player", "vsphere"}
    for i, column in enumerate(columns):
        caps = declared_capabilities(column, tmp_path)
        for row in rows[2:]:
            match = _CAPABILITY_ROW.search(row[0])
            expected = getattr(caps, match.group(1)) if match else True
            assert row[1 + i] == ("✓" if expected else "✗"), f"{column}: {row[0]}"


def test_usage_fields_table_matches_the_backends(tmp_path: Path) -> None:
    text = (DOCS / "lifecycle.md").read_text()
    block = text.split("| backend | CPU time |")[1].split("\n\n")[0]
    fields = [
        ("cpu_seconds",),
        ("memory_bytes",),
        ("disk_read_bytes", "disk_write_bytes"),
        ("net_rx_bytes", "net_tx_bytes"),
    ]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()[2:]]
    assert [r[0] for r in rows] == ["memory", "qemu", "libvirt", "virtualbox", "vmware", "vsphere"]
    for cells in rows:
        measured = declared_capabilities(cells[0], tmp_path).usage_fields
        documented = {f for group, cell in zip(fields, cells[1:], strict=True) if cell == "✓" for f in group}
        assert documented == set(measured), cells[0]


def test_exit_codes_are_documented_as_implemented() -> None:
    import vmctl.cli

    for text in ((DOCS / "cli.md").read_text(), vmctl.cli.__doc__ or ""):
        for cls, code in EXIT_CODES:
            if cls is not vmctl.VmctlError:
                assert re.search(rf"^\| {code} \| .*`{cls.__name__}`", text, re.M), f"{cls.__name__}: {code}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_page_is_in_the_nav(page: str) -> None:
    assert f": {page}" in (ROOT / "mkdocs.yml").read_text()


def test_capabilities_fields_are_all_in_the_table() -> None:
    rows = _table("lifecycle.md", "capabilities table")
    named = {m.group(1) for row in rows for m in [_CAPABILITY_ROW.search(row[0])] if m}
    flags = {f for f in Capabilities.__dataclass_fields__ if f != "usage_fields"}
    assert named == flags
