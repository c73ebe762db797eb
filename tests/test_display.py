"""Plain-text and HTML rendering of machines, usage and snapshots."""

from __future__ import annotations

import html.parser
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import display
from vmctl.display import MachineList, SnapshotList, UsageMap

_namespaces = itertools.count(1)


class _Collect(html.parser.HTMLParser):
    """Parses HTML strictly enough to see tags and text, and to catch injected markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> _Collect:
    parser = _Collect()
    parser.feed(markup)
    parser.close()
    return parser


@pytest.fixture
def hv() -> Iterator[vmctl.Hypervisor]:
    h = vmctl.connect("memory", namespace=f"display-{next(_namespaces)}")
    yield h
    for vm in h.machines():
        vm.destroy()


@pytest.fixture
def odd_dir(tmp_path: Path) -> Path:
    """A directory whose name is HTML markup: paths are shown, so they must be escaped."""
    d = tmp_path / "<script>alert('x')<script>&"
    d.mkdir()
    return d


def make(hv: vmctl.Hypervisor, name: str, odd_dir: Path, **kwargs: object) -> vmctl.Machine:
    disk = odd_dir / "base.img"
    if not disk.exists():
        disk.write_bytes(b"\0" * 512)
    return hv.create(vmctl.MachineSpec(name=name, disk=disk, **kwargs))  # type: ignore[arg-type]


def test_formatting_helpers() -> None:
    assert display.format_bytes(5 * 1024**3) == "5.0 GiB"
    assert display.format_bytes(3 * 1024**6) == "3072.0 PiB"
    assert display.format_rate(0) == "0 B/s"
    assert display.format_seconds(59.999) == "60.00 s"
    assert display.format_seconds(3600) == "1 h 00 min"
    assert display.format_time(None) == "-"
    assert display.format_time(0).count(":") == 2


def test_text_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = display.text_table(["NAME", "SIZE"], [["a", 1], ["long-name", 12345], ["b", None]], right=[1])
    assert text.splitlines() == [
        "NAME        SIZE",
        "a              1",
        "long-name  12345",
        "b              -",
    ]
    assert display.text_table(["A"], [["line\nbreak"]]).splitlines()[1] == "line break"


def test_html_table_escapes_every_cell_and_header() -> None:
    markup = display.html_table(["<h>"], [["<img src=x onerror=alert(1)>"], ['"quoted" & more']])
    parsed = parse(markup)
    assert "img" not in parsed.tags and "h" not in parsed.tags
    assert "<img src=x onerror=alert(1)>" in parsed.text
    assert '"quoted" & more' in parsed.text
    assert "no rows" in display.html_table(["A"], [], empty="no rows")


def test_machine_text_and_html(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    kernel = odd_dir / "vmlinuz"
    kernel.write_bytes(b"k")
    vm = make(
        hv,
        "web-1",
        odd_dir,
        kernel=kernel,
        cmdline="console=ttyS0 <b>bold</b> & co",
        memory_mib=512,
        cpus=2,
        network=vmctl.Network(port_forwards=[vmctl.PortForward(8080, 80)]),
        shared_dirs={"data": odd_dir},
    )
    vm.start()
    text = display.machine_text(vm)
    lines = dict(line.split(None, 1) for line in text.splitlines() if not line.startswith("share"))
    assert lines["name"] == "web-1" and lines["state"] == "running" and lines["backend"] == "memory"
    assert lines["memory"] == "512.0 MiB" and lines["cpus"] == "2" and lines["pid"] == str(vm.pid)
    assert lines["network"] == "user NAT (127.0.0.1:8080->80/tcp)"
    assert lines["cmdline"] == "console=ttyS0 <b>bold</b> & co"

    markup = display.machine_html(vm)
    parsed = parse(markup)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "console=ttyS0 <b>bold</b> & co" in parsed.text
    assert str(odd_dir / "base.img") in parsed.text
    assert "running" in parsed.text and "web-1" in "".join(parsed.text)
    assert parsed.tags.count("tr") == len(display.machine_fields(vm))


def test_machine_display_survives_a_destroyed_machine(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    vm = make(hv, "gone", odd_dir)
    vm.destroy()
    assert re.search(r"^state +not found$", display.machine_text(vm), re.M)
    assert "not found" in parse(display.machine_html(vm)).text
    assert display.machines_text([vm]).splitlines()[1].split() == ["gone", "not", "found", "?", "?", "-"]


def test_machine_list_keeps_its_repr_and_renders_a_table(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    a = make(hv, "a", odd_dir)
    b = make(hv, "b", odd_dir, memory_mib=1024)
    b.start()
    vms = MachineList(hv.machines())
    assert [v.name for v in vms] == [a.name, b.name]
    assert repr(vms) == repr(list(vms))
    assert str(vms).splitlines() == [
        "NAME  STATE    CPUS     MEMORY    PID",
        "a     stopped     1  256.0 MiB      -",
        f"b     running     1    1.0 GiB  {b.pid}",
    ]
    parsed = parse(vms._repr_html_())
    assert parsed.tags.count("tr") == 3 and "running" in parsed.text and "stopped" in parsed.text
    assert "no machines" in MachineList()._repr_html_()


def test_ipython_pretty_printer_shows_the_table(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    pretty = pytest.importorskip("IPython.lib.pretty")
    make(hv, "a", odd_dir)
    vms = MachineList(hv.machines())
    assert pretty.pretty(vms) == str(vms)


def test_usage_rendering() -> None:
    u = vmctl.Usage("m<1>", taken_at=0, cpu_seconds=75.5, memory_bytes=300 << 20, disk_read_bytes=2048)
    text = display.usage_text(u)
    assert "cpu time      1 min 15 s" in text and "memory        300.0 MiB" in text
    assert "net received  -" in text and "disk read     2.0 KiB" in text
    parsed = parse(display.usage_html(u))
    assert "usage of m<1> at " + display.format_time(0) in parsed.text
    usages = UsageMap({"m<1>": u, "n": vmctl.Usage("n")})
    assert str(usages).splitlines()[0].split()[:3] == ["NAME", "CPU", "TIME"]
    assert str(usages).splitlines()[2].split() == ["n", "-", "-", "-", "-", "-", "-"]
    assert parse(usages._repr_html_()).tags.count("tr") == 3
    assert repr(usages) == repr(dict(usages))


def test_snapshot_rendering() -> None:
    snaps = SnapshotList(
        [
            vmctl.Snapshot("s1", created=0, has_memory=True, description="<i>first</i>"),
            vmctl.Snapshot("s2", created=60, has_memory=False, parent="s1"),
        ]
    )
    lines = str(snaps).splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "MEMORY", "PARENT", "DESCRIPTION"]
    assert lines[1].split()[0] == "s1" and lines[1].split()[3:] == ["yes", "-", "<i>first</i>"]
    assert lines[2].split()[3:] == ["no", "s1"]
    parsed = parse(snaps._repr_html_())
    assert "i" not in parsed.tags and "<i>first</i>" in parsed.text
    assert "no snapshots" in SnapshotList()._repr_html_()
    assert parse(display.snapshot_html(snaps[0])).tags.count("tr") == 2


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, vmctl.Usage("m", taken_at=1, cpu_seconds=1), None),
        (vmctl.Usage("m", taken_at=1, cpu_seconds=1), vmctl.Usage("m", taken_at=1, cpu_seconds=2), None),
        (vmctl.Usage("m", taken_at=1, cpu_seconds=5), vmctl.Usage("m", taken_at=2, cpu_seconds=1), None),
        (vmctl.Usage("m", taken_at=1, cpu_seconds=1), vmctl.Usage("m", taken_at=3, cpu_seconds=4), 150.0),
        (vmctl.Usage("m", taken_at=1), vmctl.Usage("m", taken_at=3, cpu_seconds=4), None),
    ],
)
def test_usage_rates_cpu(before: vmctl.Usage | None, after: vmctl.Usage, expected: float | None) -> None:
    assert display.usage_rates(before, after)["cpu_percent"] == expected


def test_usage_rates_io() -> None:
    a = vmctl.Usage("m", taken_at=10, net_rx_bytes=1000, net_tx_bytes=0, disk_write_bytes=0)
    b = vmctl.Usage("m", taken_at=14, net_rx_bytes=5000, net_tx_bytes=400, disk_write_bytes=None)
    rates = display.usage_rates(a, b)
    assert rates == {
        "cpu_percent": None,
        "disk_read_rate": None,
        "disk_write_rate": None,
        "net_rx_rate": 1000.0,
        "net_tx_rate": 100.0,
    }


def test_the_core_returns_plain_values_and_table_wraps_them(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    vm = make(hv, "plain", odd_dir)
    vm.start()
    vm.snapshot("s1")
    machines, snaps, usages = hv.machines(), vm.snapshots(), hv.usage_all()
    assert type(machines) is list and type(snaps) is list and type(usages) is dict
    assert str(display.table(machines)) == display.machines_text(machines)
    assert str(display.table(snaps)) == display.snapshots_text(snaps)
    assert str(display.table(usages)) == display.usages_text(usages.values())
    assert isinstance(display.table([]), MachineList)
    with pytest.raises(TypeError):
        display.table([vm, snaps[0]])


def test_ipython_shows_machines_usage_and_snapshots_as_html(hv: vmctl.Hypervisor, odd_dir: Path) -> None:
    interactive = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactive.InteractiveShell.instance()
    try:
        display.load_ipython_extension(shell)
        vm = make(hv, "shown", odd_dir)
        snap = vmctl.Snapshot("s<1>", created=0, has_memory=False)
        for value, expected in ((vm, "shown"), (vm.usage(), "usage of shown"), (snap, "s<1>")):
            data, _ = shell.display_formatter.format(value)
            assert expected in " ".join(parse(data["text/html"]).text)
    finally:
        interactive.InteractiveShell.clear_instance()


def test_types_and_interface_do_not_import_the_display_module() -> None:
    import ast

    import vmctl.interface
    import vmctl.types

    for module in (vmctl.types, vmctl.interface):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "vmctl.display" not in imported and "vmctl" not in imported, module.__name__
