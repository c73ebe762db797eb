"""Connection options that need no pyvmomi: the password's source and the TLS context."""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

from vmctl.errors import InvalidSpec

__all__ = ["DEFAULT_PASSWORD_ENV", "DEFAULT_USER_ENV", "resolve_password", "resolve_user", "tls_context"]

log = logging.getLogger("vmctl.vsphere")

DEFAULT_PASSWORD_ENV = "VMCTL_VSPHERE_PASSWORD"  # noqa: S105 - a variable name
DEFAULT_USER_ENV = "VMCTL_VSPHERE_USER"


def resolve_user(user: str | None) -> str:
    """``user``, else ``$VMCTL_VSPHERE_USER``."""
    if user is None:
        user = os.environ.get(DEFAULT_USER_ENV)
    if not isinstance(user, str) or not user or "\x00" in user:
        raise InvalidSpec("user", f"give user= or set ${DEFAULT_USER_ENV} (got {user!r})")
    return user


def resolve_password(password: str | None, password_env: str | None, password_file: str | Path | None) -> str:
    """The password from exactly one source: the argument, an environment variable, or a file.

    With none given, ``$VMCTL_VSPHERE_PASSWORD`` is used. A file keeps its first line (a trailing
    newline is dropped); one readable by other users is used with a warning.
    """
    given = [name for name, value in (("password", password), ("password_env", password_env)) if value is not None]
    if password_file is not None:
        given.append("password_file")
    if len(given) > 1:
        raise InvalidSpec("password", f"give only one of password=, password_env=, password_file= (got {given})")
    if password is not None:
        if not isinstance(password, str):
            raise InvalidSpec("password", "must be a string")
        return password
    if password_file is not None:
        if not isinstance(password_file, (str, Path)) or "\x00" in str(password_file):
            raise InvalidSpec("password_file", f"{password_file!r} is not a path")
        path = Path(password_file).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSpec("password_file", f"cannot read {path}: {exc}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("password file %s is readable by other users; chmod 600 it", path)
        lines = text.splitlines()
        return lines[0] if lines else ""
    name = password_env if password_env is not None else DEFAULT_PASSWORD_ENV
    if not isinstance(name, str) or not name:
        raise InvalidSpec("password_env", f"{name!r} is not an environment variable name")
    if name not in os.environ:
        raise InvalidSpec(
            "password",
            f"no password: ${name} is not set (give password=, password_env= or password_file=)",
        )
    return os.environ[name]


def tls_context(verify_tls: bool, ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the server against the system's CAs (or ``ca_file``), or, with ``verify_tls=False``, not at all."""
    if not isinstance(verify_tls, bool):
        raise InvalidSpec("verify_tls", f"{verify_tls!r} is not a boolean")
    if ca_file is not None and not Path(ca_file).is_file():
        raise InvalidSpec("ca_file", f"{ca_file} does not exist or is not a file")
    if not verify_tls:
        if ca_file is not None:
            raise InvalidSpec("ca_file", "a CA file makes no sense with verify_tls=False")
        log.warning("vsphere: not verifying the server's TLS certificate (verify_tls=False)")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
