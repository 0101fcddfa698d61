"""Built-in health checkers (http, tcp, command, grpc) and the loading of plugin checkers.

Each checker implements :class:`ctrlplane.types.Checker`: it executes one
check and returns a :class:`ctrlplane.types.Probe`, ``unknown`` (with the
reason) when the check cannot be executed at all; it never raises for a
malformed check. The caller enforces ``spec.timeout`` by cancelling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.checks.command import CommandChecker
    from ctrlplane.checks.grpc import GrpcChecker
    from ctrlplane.checks.http import HttpChecker
    from ctrlplane.checks.registry import (
        ENTRY_POINT_GROUP,
        CheckerLoadError,
        builtin_checkers,
        close_checkers,
        load_checkers,
    )
    from ctrlplane.checks.tcp import TcpChecker

__all__ = [
    "ENTRY_POINT_GROUP",
    "CheckerLoadError",
    "CommandChecker",
    "GrpcChecker",
    "HttpChecker",
    "TcpChecker",
    "builtin_checkers",
    "close_checkers",
    "load_checkers",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "CommandChecker": "ctrlplane.checks.command",
    "GrpcChecker": "ctrlplane.checks.grpc",
    "HttpChecker": "ctrlplane.checks.http",
    "ENTRY_POINT_GROUP": "ctrlplane.checks.registry",
    "CheckerLoadError": "ctrlplane.checks.registry",
    "builtin_checkers": "ctrlplane.checks.registry",
    "close_checkers": "ctrlplane.checks.registry",
    "load_checkers": "ctrlplane.checks.registry",
    "TcpChecker": "ctrlplane.checks.tcp",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
