"""Backend options from ``$VMCTL_OPTIONS`` and ``--option KEY=VALUE``, typed as the backend declares them."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from vmctl.errors import InvalidSpec
from vmctl.registry import BackendProvider

from ._base import ENV_OPTIONS, _UsageError

__all__ = ["backend_options", "parse_options"]


def _convert(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    if value.isdigit():
        return int(value)
    return value


def _split(items: Sequence[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise _UsageError(f"backend option {item!r} is not KEY=VALUE")
        texts[key] = value
    return texts


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to connect() keyword arguments, without knowing the backend.

    ``true``/``false`` become booleans and decimal digits integers; the command itself types
    each value as its backend declares the option (see :func:`backend_options`).

    >>> parse_options(["state_dir=/srv/vms", "port=8989", "insecure=true"])
    {'state_dir': '/srv/vms', 'port': 8989, 'insecure': True}
    """
    return {key: _convert(text) for key, text in _split(items).items()}


def backend_options(provider: BackendProvider, cli_items: Sequence[str]) -> dict[str, Any]:
    """The options for ``provider`` from ``$VMCTL_OPTIONS`` and then ``--option`` (which wins).

    A value is read as the type the provider declares for its option (``-o namespace=123`` stays
    a string, ``-o keepalive=5,3`` is a pair); an option the provider does not declare is typed
    by :func:`parse_options`' rules and left for :meth:`~vmctl.registry.BackendProvider.connect`
    to refuse. Raises :class:`~vmctl.errors.InvalidSpec` for a value its type cannot read.
    """
    env = os.environ.get(ENV_OPTIONS, "")
    try:
        env_items = shlex.split(env)
    except ValueError as exc:
        raise _UsageError(f"${ENV_OPTIONS} cannot be parsed: {exc}") from None
    texts = _split(env_items)
    texts.update(_split(cli_items))
    declared = {o.name: o for o in provider.options or ()}
    options: dict[str, Any] = {}
    for key, text in texts.items():
        option = declared.get(key)
        if option is None:
            options[key] = _convert(text)
            continue
        try:
            options[key] = option.parse(text)
        except ValueError as exc:
            raise InvalidSpec(f"option {key!r}", f"backend {provider.name!r} cannot read {text!r}: {exc}") from None
    return options
