"""A free TCP port on loopback, for a forward or a console nobody else has asked for.

>>> from vmctl.backend.ports import free_port
>>> 1024 <= free_port() <= 65535
True
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the kernel's pick; another process may take it
    before it is used, so a caller that binds it must handle "address in use")."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
