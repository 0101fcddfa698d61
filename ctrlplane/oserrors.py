"""Short accounts of failed connections, shared by the checkers and the collectors."""

from __future__ import annotations

import socket


def describe_os_error(exc: OSError) -> str:
    """A short, lower-case account of a failed connection ("connection refused")."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return exc.strerror or str(exc) or type(exc).__name__
