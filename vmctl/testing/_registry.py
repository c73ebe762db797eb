"""Finding harnesses: the ``vmctl.harnesses`` entry point group, and the ``pytest_vmctl_harnesses``
hook for harnesses that live in a test tree (a conftest). Selecting them by ``--vmctl-backend``."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from vmctl.testing._harness import Harness

__all__ = ["HARNESS_GROUP", "HarnessError", "Registered", "from_entry_points", "registered", "select"]

#: The entry point group a backend package registers its harness in.
HARNESS_GROUP = "vmctl.harnesses"


class HarnessError(Exception):
    """A harness registration is broken, or a selection names no registered harness."""


@dataclass(frozen=True)
class Registered:
    """One harness class and the names ``--vmctl-backend`` selects it by."""

    cls: type[Harness]
    names: frozenset[str]
    source: str

    @property
    def id(self) -> str:
        return self.cls.id


def harness_classes(obj: object, source: str) -> list[type[Harness]]:
    """``obj`` as a list of Harness subclasses: an entry point may name one class or a list of them.

    >>> from vmctl.testing import Harness
    >>> harness_classes([Harness], "doctest")
    [<class 'vmctl.testing._harness.Harness'>]
    >>> harness_classes("qemu", "doctest")
    Traceback (most recent call last):
    vmctl.testing._registry.HarnessError: doctest: expected a Harness subclass or a list of them, got 'qemu'
    """
    items = [obj] if isinstance(obj, type) else list(obj) if isinstance(obj, list | tuple) else None
    if items is None or not all(isinstance(c, type) and issubclass(c, Harness) for c in items):
        raise HarnessError(f"{source}: expected a Harness subclass or a list of them, got {obj!r}")
    return items


def _load(ep: EntryPoint) -> list[Registered]:
    source = f"entry point {ep.name} = {ep.value}"
    try:
        loaded = ep.load()
    except Exception as exc:
        raise HarnessError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc
    return [
        Registered(c, frozenset({c.id, c.backend, ep.name} - {""}), source) for c in harness_classes(loaded, source)
    ]


@functools.cache
def _entry_points() -> tuple[EntryPoint, ...]:
    return tuple(sorted(entry_points(group=HARNESS_GROUP), key=lambda ep: ep.name))


@functools.cache
def _loaded(ep: EntryPoint) -> tuple[Registered, ...]:
    return tuple(_load(ep))


def from_entry_points(wanted: Sequence[str] = ()) -> list[Registered]:
    """Harnesses registered by entry point. With ``wanted``, and when each wanted name is an entry
    point's name, only those entry points are imported (the others may need what is not installed)."""
    eps = _entry_points()
    if wanted and set(wanted) <= {ep.name for ep in eps}:
        eps = tuple(ep for ep in eps if ep.name in wanted)
    return [r for ep in eps for r in _loaded(ep)]


def registered(from_hook: Iterable[Iterable[type[Harness]]], wanted: Sequence[str] = ()) -> list[Registered]:
    """Entry point harnesses, then those a conftest returns from ``pytest_vmctl_harnesses``, one per id."""
    found = from_entry_points(wanted)
    for result in from_hook:
        for cls in harness_classes(list(result), "pytest_vmctl_harnesses"):
            found.append(
                Registered(cls, frozenset({cls.id, cls.backend} - {""}), f"{cls.__module__}.{cls.__qualname__}")
            )
    unique: dict[str, Registered] = {}
    for reg in found:
        other = unique.setdefault(reg.id, reg)
        if other.cls is not reg.cls:
            raise HarnessError(f"two harnesses have the id {reg.id!r}: {other.source} and {reg.source}")
    return list(unique.values())


def select(harnesses: Sequence[Registered], wanted: Sequence[str]) -> dict[str, type[Harness]]:
    """The harnesses that ``wanted`` names (all of them when it is empty), by id, in registration order."""
    if not wanted:
        return {r.id: r.cls for r in harnesses}
    return {r.id: r.cls for r in harnesses if r.names & set(wanted)}


def unknown(harnesses: Sequence[Registered], wanted: Sequence[str]) -> list[str]:
    """The names in ``wanted`` that select no harness."""
    known = set().union(*(r.names for r in harnesses)) if harnesses else set()
    return [w for w in wanted if w not in known]


def describe(harnesses: Sequence[Registered]) -> str:
    """One line per harness, for error messages and the report header."""
    return "; ".join(f"{r.id} ({r.source})" for r in harnesses) or "none"
