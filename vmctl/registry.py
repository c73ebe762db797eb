"""Finding backends: plug-ins registered under the entry-point group ``vmctl.backends``.

Each entry point names a :class:`BackendProvider`: a small object that says whether its backend
can run here (without importing the backend's heavy dependencies) and opens connections.
A provider also declares its connect options (:class:`~vmctl.options.Option`: name, type,
default, doc); :meth:`BackendProvider.connect` checks what it is given against them once, so an
unknown or ill-typed option is an :class:`~vmctl.errors.InvalidSpec` naming the valid ones on
every backend. A third-party package adds a backend by declaring, in its ``pyproject.toml``::

    [project.entry-points."vmctl.backends"]
    mybackend = "my_package:provider"

>>> import vmctl
>>> [b.name for b in vmctl.backends()][:1]
['libvirt']
>>> vmctl.connect("memory", namspace="x")
Traceback (most recent call last):
  ...
vmctl.errors.InvalidSpec: invalid option 'namspace': backend 'memory' has no such option (valid options: namespace)
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from vmctl.errors import BackendUnavailable
from vmctl.interface import Hypervisor
from vmctl.options import REQUIRED, Option, bind_options
from vmctl.types import BackendInfo

__all__ = ["ENTRY_POINT_GROUP", "REQUIRED", "BackendProvider", "Option", "backends", "connect", "get_provider"]

ENTRY_POINT_GROUP = "vmctl.backends"
log = logging.getLogger("vmctl.registry")


class BackendProvider(ABC):
    """What an entry point of the ``vmctl.backends`` group refers to.

    ``python_modules`` are imported only by :meth:`connect`; ``tools`` are looked up on PATH.
    """

    name: str = "?"
    description: str = ""
    #: Python modules the backend imports, with the pip command that installs them.
    python_modules: tuple[tuple[str, str], ...] = ()
    #: Executables the backend runs, with how to install them.
    tools: tuple[tuple[str, str], ...] = ()
    #: The keyword arguments :meth:`connect` accepts; None (a provider that declares none) lets
    #: every option through unchecked, as before options were declared.
    options: tuple[Option, ...] | None = None

    def unavailable(self) -> tuple[str, str | None] | None:
        """None if usable here, else (reason, install hint). Cheap: imports nothing heavy."""
        import importlib.util

        for module, hint in self.python_modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"Python module {module!r} is not installed", hint
        for tool, hint in self.tools:
            if shutil.which(tool) is None:
                return f"{tool!r} is not on PATH", hint
        return None

    @abstractmethod
    def open(self, **options: Any) -> Hypervisor:
        """Return a connected :class:`Hypervisor`; may raise BackendUnavailable.

        ``options`` are those given to :meth:`connect`, already checked against :attr:`options`.
        """

    def checks_availability_itself(self, options: Mapping[str, Any]) -> bool:
        """True if ``options`` name the backend's tool explicitly (a path), so that :meth:`open`
        checks that tool itself and :meth:`unavailable`'s probe of the usual places is skipped."""
        return False

    def bind_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``options`` against :attr:`options`; :class:`InvalidSpec` names the valid ones."""
        if self.options is None:
            return dict(options)
        return bind_options(self.name, self.options, options)

    def connect(self, **options: Any) -> Hypervisor:
        """Check ``options``, check that the backend can run here, and :meth:`open` it."""
        bound = self.bind_options(options)
        if not self.checks_availability_itself(bound):
            problem = self.unavailable()
            if problem is not None:
                raise BackendUnavailable(self.name, problem[0], problem[1])
        return self.open(**bound)

    def info(self) -> BackendInfo:
        problem = self.unavailable()
        return BackendInfo(
            name=self.name,
            usable=problem is None,
            reason=problem[0] if problem else None,
            hint=problem[1] if problem else None,
            description=self.description,
        )


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def get_provider(name: str) -> BackendProvider:
    """Load the provider registered as ``name``; raises :class:`BackendUnavailable`."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise BackendUnavailable(name, f"no backend of that name is installed (installed: {known})")
    try:
        provider = eps[name].load()
    except Exception as exc:  # a broken plug-in must not break backends() for the others
        raise BackendUnavailable(name, f"its plug-in failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(provider, BackendProvider):
        raise BackendUnavailable(name, f"entry point {eps[name].value!r} is not a vmctl BackendProvider")
    return provider


def backends() -> list[BackendInfo]:
    """Every installed backend, whether it is usable here, and if not why and how to fix it."""
    result = []
    for name in sorted(_entry_points()):
        try:
            result.append(get_provider(name).info())
        except BackendUnavailable as exc:
            result.append(BackendInfo(name=name, usable=False, reason=exc.reason, hint=exc.hint))
    return result


def connect(backend: str = "qemu", **options: Any) -> Hypervisor:
    """Open a connection to ``backend`` with that backend's options.

    >>> import vmctl
    >>> hv = vmctl.connect("memory")
    >>> hv.name
    'memory'
    """
    return get_provider(backend).connect(**options)
