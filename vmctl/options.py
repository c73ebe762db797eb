"""Connect options: what each backend accepts, checked once before the backend is opened.

A provider declares its options as :class:`Option` values; :func:`bind_options` refuses an unknown
or ill-typed one with :class:`~vmctl.errors.InvalidSpec` naming the valid ones, and
:meth:`Option.parse` turns the text of a command line into the declared type.

>>> from vmctl.options import Option, bind_options
>>> declared = (Option("accel", str, "auto", "tcg, kvm or auto"), Option("port", int, 443, "TCP port"))
>>> bind_options("demo", declared, {"port": 8443})
{'port': 8443}
>>> bind_options("demo", declared, {"acel": "tcg"})
Traceback (most recent call last):
  ...
vmctl.errors.InvalidSpec: invalid option 'acel': backend 'demo' has no such option (valid options: accel, port)
>>> declared[1].parse("8443")
8443
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vmctl.errors import InvalidSpec

__all__ = ["REQUIRED", "Option", "bind_options", "parse_bool"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option that has none: connect() refuses to go without it.
REQUIRED: Final[Any] = _Required()

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    """``true``/``yes``/``on``/``1`` or ``false``/``no``/``off``/``0``, in any case."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


_Type = type


def _type_names(types: tuple[_Type, ...]) -> str:
    return " or ".join(dict.fromkeys("path" if t is os.PathLike else t.__name__ for t in types))


@dataclass(frozen=True)
class Option:
    """One keyword argument of ``vmctl.connect(backend, ...)``.

    ``type`` is the type (or tuple of types) a value must be an instance of; ``None`` is accepted
    too when the ``default`` is None. ``bool`` never passes for ``int`` or ``float``, and an
    ``int`` passes for ``float``. ``parse`` turns command-line text into a value (by default
    from ``type``: ``int``, ``float``, ``bool`` or ``str``/path).
    """

    name: str
    type: _Type | tuple[_Type, ...]
    default: Any = REQUIRED
    doc: str = ""
    parse_text: Callable[[str], Any] | None = None

    @property
    def types(self) -> tuple[_Type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is of this option's type."""
        if value is None:
            return self.default is None
        types = self.types
        if isinstance(value, bool):
            return bool in types
        if isinstance(value, int) and float in types:
            return True
        return isinstance(value, types)

    def check(self, backend: str, value: Any) -> None:
        """Raise :class:`InvalidSpec` unless ``value`` is of this option's type."""
        if not self.accepts(value):
            expected = _type_names(self.types) + (" or None" if self.default is None else "")
            raise InvalidSpec(
                f"option {self.name!r}",
                f"backend {backend!r} expects {expected}, not {value!r} ({type(value).__name__})",
            )

    def parse(self, text: str) -> Any:
        """The value of command-line ``text`` for this option; ValueError if it is not one."""
        if self.parse_text is not None:
            return self.parse_text(text)
        types = self.types
        if bool in types:
            return parse_bool(text)
        if int in types and float not in types:
            return int(text)
        if float in types:
            return float(text)
        if str in types or os.PathLike in types:
            return text
        raise ValueError(f"option {self.name!r} cannot be given as text")


def bind_options(backend: str, declared: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against ``declared``; return the options to open the backend with.

    Raises :class:`InvalidSpec` for an unknown option (naming the valid ones), a value of the wrong
    type, or a missing required option. Options not given are left to the backend's defaults.
    """
    by_name = {o.name: o for o in declared}
    valid = ", ".join(sorted(by_name)) or "none"
    for name in given:
        if name not in by_name:
            raise InvalidSpec(f"option {name!r}", f"backend {backend!r} has no such option (valid options: {valid})")
    for name, value in given.items():
        by_name[name].check(backend, value)
    for option in declared:
        if option.required and option.name not in given:
            what = f": {option.doc}" if option.doc else ""
            raise InvalidSpec(f"option {option.name!r}", f"backend {backend!r} needs {option.name}={what}")
    return dict(given)
