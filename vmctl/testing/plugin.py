"""vmctl's pytest plugin: runs the contract suite against any backend's harness.

pytest loads it through the ``pytest11`` entry point ``vmctl`` (``-p no:vmctl`` turns it off). In a
run that does not ask for the contract it only adds the ``--vmctl-backend`` option, two markers,
the ``harness``/``hv``/``make_vm`` fixtures and the ``pytest_vmctl_harnesses`` hook: it imports no
harness and collects nothing.

The contract is asked for by ``--vmctl-backend=NAME`` (or the ``VMCTL_CONTRACT`` variable): the
harnesses registered in the ``vmctl.harnesses`` entry point group (or by a conftest's
``pytest_vmctl_harnesses``) whose id, backend or entry point name is NAME are selected, and when
no paths are given on the command line the suite's modules are added to what pytest collects. It
is also asked for by naming the suite, ``pytest --pyargs vmctl.testing``, which runs it against
every registered harness. See docs/contract-suite.md.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl.testing import _hookspec
from vmctl.testing._harness import Harness
from vmctl.testing._registry import HARNESS_GROUP, HarnessError, Registered, describe, registered, select, unknown

__all__ = ["CONTRACT_DIR", "contract_files"]

pytest.register_assert_rewrite("vmctl.testing.contract")

TESTING_DIR = Path(__file__).resolve().parent
#: Where the contract suite's test modules are.
CONTRACT_DIR = TESTING_DIR / "contract"
#: The environment variable read when ``--vmctl-backend`` is not given.
ENV = "VMCTL_CONTRACT"

_WANTED = pytest.StashKey[list[str]]()
_ASKED = pytest.StashKey[bool]()
_NAMED = pytest.StashKey[bool]()
_NO_HARNESS = pytest.StashKey[set[str]]()
_CLASSES = pytest.StashKey[dict[str, type[Harness]]]()
_INSTANCES = pytest.StashKey[dict[str, Harness]]()


def contract_files() -> list[Path]:
    """The suite's test modules."""
    return sorted(CONTRACT_DIR.glob("test_*.py"))


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmctl", "vmctl contract suite")
    group.addoption(
        "--vmctl-backend",
        action="append",
        default=[],
        metavar="NAME",
        dest="vmctl_backend",
        help="run vmctl's contract suite against the harnesses registered as NAME (a harness id, a backend "
        f"name or an entry point name; repeat or comma-separate for several; default: ${ENV})",
    )


def _wanted(config: pytest.Config) -> list[str]:
    raw: list[str] = config.getoption("vmctl_backend") or [os.environ.get(ENV, "")]
    return [name.strip() for item in raw for name in item.split(",") if name.strip()]


def _names_the_suite(config: pytest.Config) -> bool:
    """A command-line path (or ``--pyargs`` module) is the suite, a module of it, or vmctl.testing."""
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        return False
    for arg in config.args:
        target = arg.split("::")[0]
        path = Path(config.invocation_params.dir, target).resolve()
        if config.option.pyargs and not path.exists():
            try:
                spec = importlib.util.find_spec(target)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin is not None:
                path = Path(spec.origin).resolve()
                path = path.parent if path.name == "__init__.py" else path
        if path == TESTING_DIR or path == CONTRACT_DIR or CONTRACT_DIR in path.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vmctl_needs(*attrs): run only for harnesses whose attributes are all true")
    config.addinivalue_line("markers", "vmctl_contract: parametrise this test over the selected vmctl harnesses")
    wanted = _wanted(config)
    named = _names_the_suite(config)
    config.stash[_WANTED] = wanted
    config.stash[_NAMED] = named
    config.stash[_ASKED] = bool(wanted) or named
    config.stash[_NO_HARNESS] = set()
    config.stash[_CLASSES] = {}
    config.stash[_INSTANCES] = {}
    if wanted and config.args_source is not pytest.Config.ArgsSource.ARGS:
        config.args = [*config.args, str(CONTRACT_DIR)]


def pytest_report_header(config: pytest.Config) -> str | None:
    wanted = config.stash.get(_WANTED, [])
    if not wanted:
        return None
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        where = f"added from {CONTRACT_DIR}"
    elif config.stash.get(_NAMED, False):
        where = "named on the command line"
    else:
        where = "not collected (paths given: add --pyargs vmctl.testing.contract)"
    return f"vmctl contract: --vmctl-backend={','.join(wanted)}; suite {where}"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == CONTRACT_DIR and not config.stash.get(_ASKED, False):
        return True
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """The suite's modules are collected even where ``python_files`` does not match ``test_*.py``."""
    if file_path.parent != CONTRACT_DIR or file_path not in contract_files():
        return None
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in parent.config.getini("python_files")):
        return None  # pytest's own collector takes it
    return pytest.Module.from_parent(parent, path=file_path)


def _registry(config: pytest.Config) -> list[Registered]:
    wanted: list[str] = config.stash[_WANTED]
    try:
        return registered(config.hook.pytest_vmctl_harnesses(config=config), wanted)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from exc


def _is_contract_test(metafunc: pytest.Metafunc) -> bool:
    module = getattr(metafunc.function, "__module__", "") or ""
    return module.startswith("vmctl.testing.") or metafunc.definition.get_closest_marker("vmctl_contract") is not None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" not in metafunc.fixturenames or not _is_contract_test(metafunc):
        return
    config = metafunc.config
    wanted: list[str] = config.stash[_WANTED]
    classes = select(_registry(config), wanted)
    config.stash[_CLASSES].update(classes)
    needs = metafunc.definition.get_closest_marker("vmctl_needs")
    ids = [hid for hid, cls in classes.items() if needs is None or all(getattr(cls, a) for a in needs.args)]
    if not ids:
        config.stash[_NO_HARNESS].add(metafunc.definition.nodeid)
        return
    metafunc.parametrize("harness", ids, indirect=True, scope="session")


def _dedup_key(item: pytest.Item) -> tuple[str, str, str] | None:
    function = getattr(item, "function", None)
    module = getattr(function, "__module__", "") or ""
    if function is None or not module.startswith("vmctl.testing.contract"):
        return None
    callspec = getattr(item, "callspec", None)
    return module, function.__qualname__, callspec.id if callspec is not None else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.stash.get(_WANTED, [])
    if wanted:
        harnesses = _registry(config)
        if missing := unknown(harnesses, wanted):
            raise pytest.UsageError(
                f"--vmctl-backend names no registered harness: {', '.join(missing)} (registered: {describe(harnesses)})"
            )
    asked: bool = config.stash.get(_ASKED, False)
    suite = [item for item in items if _dedup_key(item) is not None]
    if suite and asked and not select(_registry(config), wanted):
        raise pytest.UsageError(
            f"the vmctl contract suite was asked for but no harness is registered: register one in the "
            f"{HARNESS_GROUP!r} entry point group (or a conftest's pytest_vmctl_harnesses)"
        )
    no_harness = config.stash.get(_NO_HARNESS, set())
    # A project that re-exports the suite from its own module (vmctl's tests/contract does) runs
    # each test once: its own copy wins over the one collected from the package.
    elsewhere = {_dedup_key(item) for item in items if CONTRACT_DIR not in item.path.parents}
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        duplicate = CONTRACT_DIR in item.path.parents and _dedup_key(item) in elsewhere
        (dropped if item.nodeid in no_harness or duplicate else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The harness under test: one instance per harness id for the whole session."""
    hid = getattr(request, "param", None)
    if hid is None:
        pytest.fail(
            f"{request.node.nodeid} uses the vmctl 'harness' fixture but is not a contract test: "
            "mark it with @pytest.mark.vmctl_contract to run it once per selected harness",
            pytrace=False,
        )
    instances = request.config.stash[_INSTANCES]
    if hid not in instances:
        instance = request.config.stash[_CLASSES][hid]()
        instance.setup(tmp_path_factory.mktemp(f"harness-{hid}"))
        instances[hid] = instance
        request.config.add_cleanup(instance.teardown)
    yield instances[hid]


@pytest.fixture
def hv(harness: Harness) -> vmctl.Hypervisor:
    """The harness's connection."""
    return harness.connect()


_counter = itertools.count(1)


@pytest.fixture
def make_vm(harness: Harness, hv: vmctl.Hypervisor) -> Iterator[Callable[..., vmctl.Machine]]:
    """Create machines with unique names; destroy them after the test whatever happened."""
    made: list[str] = []

    def make(network: bool = False, ignore_power_button: bool = False) -> vmctl.Machine:
        name = f"ct{os.getpid() % 10000}-{next(_counter)}"
        vm = harness.create(harness.spec(name, network=network, ignore_power_button=ignore_power_button))
        made.append(name)
        return vm

    yield make
    for name in made:
        try:
            hv.machine(name).destroy()
        except vmctl.MachineNotFound:
            pass
