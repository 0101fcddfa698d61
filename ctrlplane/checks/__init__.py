"""Built-in health checkers (http, tcp, command, grpc) and the loading of plugin checkers.

Each checker implements :class:`ctrlplane.types.Checker`: it executes one
check and returns a :class:`ctrlplane.types.Probe`, ``unknown`` (with the
reason) when the check cannot be executed at all; it never raises for a
malformed check. The caller enforces ``spec.timeout`` by cancelling.
"""

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
