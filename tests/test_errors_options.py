"""Connect options are declared by each provider and checked once by the core.

An unknown or ill-typed option is an ``InvalidSpec`` naming the valid options, on every backend
and on the command line (exit 9), never a bare ``TypeError`` from deep inside a backend.
"""

from __future__ import annotations

import importlib
import inspect
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl.cli import main
from vmctl.interface import Hypervisor
from vmctl.registry import BackendProvider, Option, get_provider

BUNDLED = ("libvirt", "memory", "qemu", "virtualbox", "vmware", "vsphere")


def _open_target(backend: str) -> Callable[..., Any]:
    """What each bundled provider's open() passes the options to."""
    if backend == "memory":
        from vmctl_memory import MemoryHypervisor

        return MemoryHypervisor
    if backend == "qemu":
        from vmctl_qemu._hypervisor import QemuHypervisor

        return QemuHypervisor
    if backend == "libvirt":
        from vmctl_libvirt._hypervisor import LibvirtHypervisor

        return LibvirtHypervisor
    if backend == "virtualbox":
        from vmctl_virtualbox._hypervisor import open_hypervisor

        return open_hypervisor
    if backend == "vmware":
        from vmctl_vmware._hypervisor import VmwareHypervisor

        return VmwareHypervisor
    from vmctl_vsphere._hypervisor import open_hypervisor as open_vsphere

    return open_vsphere


@pytest.mark.parametrize("backend", BUNDLED)
def test_declared_options_are_the_backends_parameters_with_their_defaults(backend: str) -> None:
    provider = get_provider(backend)
    assert provider.options is not None
    params = [p for p in inspect.signature(_open_target(backend)).parameters.values() if p.name != "self"]
    declared = {o.name: (True if o.required else o.default) for o in provider.options}
    actual = {p.name: (True if p.default is inspect.Parameter.empty else p.default) for p in params}
    assert declared == actual
    for option in provider.options:
        assert option.doc, f"{backend}: option {option.name} has no doc"
        if not option.required:
            assert option.accepts(option.default), f"{backend}: {option.name}'s default is not of its type"


@pytest.mark.parametrize("backend", BUNDLED)
def test_every_declared_option_is_documented(backend: str) -> None:
    """docs/backends.md has a table of options, or renders the backend package's docstring."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "backends.md").read_text()
    section = page.split(f"\n## {backend}")[1].split("\n## ")[0]
    text = section + (inspect.getdoc(importlib.import_module(f"vmctl_{backend}")) or "")
    for option in get_provider(backend).options or ():
        # `name` in a table or a list, or name= in a call
        assert re.search(rf"`{option.name}`|\b{option.name}=", text), f"{backend}: {option.name}"


@pytest.mark.parametrize("backend", BUNDLED)
def test_an_unknown_option_names_the_valid_ones(backend: str) -> None:
    with pytest.raises(vmctl.InvalidSpec) as caught:
        vmctl.connect(backend, foo=1)
    message = str(caught.value)
    assert caught.value.field == "option 'foo'" and backend in message
    for option in get_provider(backend).options or ():
        assert option.name in message


@pytest.mark.parametrize(
    ("backend", "name", "value"),
    [
        ("memory", "namespace", 3),
        ("qemu", "accel", 1),
        ("qemu", "state_dir", 7),
        ("libvirt", "check_access", "no"),
        ("libvirt", "keepalive", "5,3"),
        ("virtualbox", "retries", True),
        ("virtualbox", "timeout", "120"),
        ("vmware", "product", None),
        ("vsphere", "port", "443"),
        ("vsphere", "verify_tls", 1),
    ],
)
def test_an_ill_typed_option_is_invalid_spec(backend: str, name: str, value: Any) -> None:
    required = {"host": "h"} if backend == "vsphere" else {}
    with pytest.raises(vmctl.InvalidSpec) as caught:
        vmctl.connect(backend, **required, **{name: value})
    assert caught.value.field == f"option {name!r}"
    assert repr(value) in str(caught.value)


def test_a_missing_required_option_is_named() -> None:
    with pytest.raises(vmctl.InvalidSpec) as caught:
        vmctl.connect("vsphere", user="u")
    assert caught.value.field == "option 'host'" and "host=" in str(caught.value)


def test_numbers_pass_for_floats_but_booleans_never_for_numbers() -> None:
    timeout = Option("timeout", float, 60, "seconds")
    assert timeout.accepts(5) and timeout.accepts(2.5) and not timeout.accepts(True)
    assert not Option("retries", int, 5, "n").accepts(5.0)


def test_a_provider_without_declared_options_gets_every_option_unchecked() -> None:
    seen: dict[str, Any] = {}

    class Legacy(BackendProvider):
        name = "legacy"

        def open(self, **options: Any) -> Hypervisor:
            seen.update(options)
            return vmctl.connect("memory", namespace="legacy")

    Legacy().connect(anything=1, goes="x").close()
    assert seen == {"anything": 1, "goes": "x"}


# -- the command line ----------------------------------------------------------------------------------
def test_cli_unknown_option_exits_9_naming_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", "memory", "-o", "foo=1", "list"]) == 9
    err = capsys.readouterr().err
    assert err == "vmctl: error: invalid option 'foo': backend 'memory' has no such option (valid options: namespace)\n"


def test_cli_unreadable_value_exits_9(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", "vsphere", "-o", "host=h", "-o", "port=https", "list"]) == 9
    assert "invalid option 'port'" in capsys.readouterr().err


def test_cli_reads_a_value_as_the_declared_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = str(uuid.uuid4().int)[:12]  # digits: a string option all the same
    disk = tmp_path / "base.img"
    disk.write_bytes(b"")
    assert main(["--backend", "memory", "-o", f"namespace={namespace}", "create", "vm", "--disk", str(disk)]) == 0
    hv = vmctl.connect("memory", namespace=namespace)
    try:
        assert [vm.name for vm in hv.machines()] == ["vm"]
        hv.machine("vm").destroy()
    finally:
        hv.close()


def test_cli_reads_libvirt_keepalive_as_a_pair(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("libvirt")
    assert main(["--backend", "libvirt", "-o", "uri=test:///default", "-o", "keepalive=5,3", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
