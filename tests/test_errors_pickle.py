"""Every vmctl error survives pickling with its fields and message (process pools, xdist, Dask).

The classes are found by walking the subclasses of :class:`vmctl.VmctlError` after importing every
module of vmctl and of the bundled backends, so a new error class is covered without editing this
file; its constructor arguments are made up from its type hints.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import pickle
import pkgutil
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl.errors import ErrorCode
from vmctl.types import State

PACKAGES = ("vmctl", "vmctl_libvirt", "vmctl_memory", "vmctl_qemu", "vmctl_virtualbox", "vmctl_vmware", "vmctl_vsphere")


def _import_everything() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith(".__main__"):  # a command, not a module to import
                importlib.import_module(info.name)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _error_classes() -> list[type[vmctl.VmctlError]]:
    _import_everything()
    found = {c for c in _subclasses(vmctl.VmctlError) if c.__module__.split(".")[0] in PACKAGES}
    return sorted({vmctl.VmctlError, *found}, key=lambda c: f"{c.__module__}.{c.__qualname__}")


ERROR_CLASSES = _error_classes()


def _sample(annotation: Any, name: str, index: int) -> Any:
    """A value of ``annotation`` that differs from parameter to parameter."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        choices = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sample(choices[0], name, index)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        (item,) = typing.get_args(annotation)[:1]
        return tuple(_sample(item, name, index + k) for k in range(2))
    if annotation is State:
        return list(State)[index % len(State)]
    if annotation is ErrorCode:
        return ErrorCode.BUSY
    if annotation is bool:
        return index % 2 == 0
    if annotation is int:
        return 40 + index
    if annotation is float:
        return 1.25 + index
    if annotation in (str, Path):
        return annotation(f"{name}-{index}")
    raise AssertionError(f"no sample value for {name}: {annotation!r}; teach _sample this type")


def _make(cls: type[vmctl.VmctlError]) -> tuple[vmctl.VmctlError, dict[str, Any]]:
    init = cls.__init__
    if not inspect.isfunction(init):  # a built-in exception's own __init__
        return cls("a message about something"), {}
    module = importlib.import_module(init.__module__)
    hints = typing.get_type_hints(init, globalns=vars(module), localns={"State": State})
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    given: dict[str, Any] = {}
    params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
    for index, param in enumerate(params):
        value = _sample(hints[param.name], param.name, index)
        given[param.name] = value
        if param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs), given


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__qualname__)
def test_error_round_trips_through_pickle(cls: type[vmctl.VmctlError]) -> None:
    err, given = _make(cls)
    err.add_note("raised while testing")
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(err, protocol))  # noqa: S301 - made here
        assert type(back) is cls
        assert str(back) == str(err)
        assert back.args == err.args
        assert vars(back) == vars(err)
        for name, value in given.items():
            if hasattr(err, name):  # a field kept as given (sequences may become tuples)
                kept = getattr(back, name)
                assert kept == value or (isinstance(value, tuple) and tuple(kept) == value), name
        if isinstance(err, OSError):
            assert (back.errno, back.strerror, back.filename) == (err.errno, err.strerror, err.filename)


def test_the_walk_finds_the_classes_of_every_layer() -> None:
    names = {c.__qualname__ for c in ERROR_CLASSES}
    # the core, a backend's own, the BOINC adapter's and the test guest builder's
    expected = {"InvalidState", "VmrunError", "ToolsUnavailable", "JobError", "SharedMemoryError", "GuestBuildError"}
    assert expected <= names


def _refuse_in_worker(name: str) -> None:
    raise vmctl.InvalidState(name, "pause", State.STOPPED, (State.RUNNING,))


def test_an_error_raised_in_a_process_pool_reaches_the_caller_typed() -> None:
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_refuse_in_worker, "web")
        with pytest.raises(vmctl.InvalidState) as caught:
            future.result(timeout=60)
    err = caught.value
    assert (err.machine, err.verb, err.state, err.allowed) == ("web", "pause", State.STOPPED, (State.RUNNING,))
    assert str(err) == "cannot pause machine 'web' while it is stopped (allowed from: running)"
