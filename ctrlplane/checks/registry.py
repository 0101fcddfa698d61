"""The checkers a health runner can use: the built-ins and those installed packages declare."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping

import structlog

from ctrlplane.checks.command import CommandChecker
from ctrlplane.checks.grpc import GrpcChecker
from ctrlplane.checks.http import HttpChecker
from ctrlplane.checks.tcp import TcpChecker
from ctrlplane.errors import CtrlplaneError
from ctrlplane.plugins import close_all, entry_point_objects, keyed
from ctrlplane.types import Checker

ENTRY_POINT_GROUP = "ctrlplane.checkers"

log = structlog.get_logger("ctrlplane.checks")


class CheckerLoadError(CtrlplaneError):
    """A checker that an entry point declares cannot be loaded.

    Attributes:
        ref: The entry point that failed, with its ``module:attr`` value.
        reason: Why it could not be loaded.
    """

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"checker {ref}: {reason}")

    def __reduce__(self) -> tuple[type[CheckerLoadError], tuple[str, str]]:
        return type(self), (self.ref, self.reason)


def builtin_checkers() -> dict[str, Checker]:
    """New instances of the built-in checkers, keyed by type: http, tcp, command, grpc."""
    checkers: list[Checker] = [HttpChecker(), TcpChecker(), CommandChecker(), GrpcChecker()]
    return {checker.type: checker for checker in checkers}


def _checker(ref: str, obj: object) -> Checker:
    if not isinstance(obj, Checker):
        raise CheckerLoadError(ref, "is not a checker: it needs 'type' and 'check(spec, instance)'")
    if not isinstance(obj.type, str) or not obj.type:
        raise CheckerLoadError(ref, f"its 'type' must be a non-empty string, not {obj.type!r}")
    if not inspect.iscoroutinefunction(obj.check):
        raise CheckerLoadError(ref, "its 'check' must be an async method")
    return obj


def load_checkers(group: str = ENTRY_POINT_GROUP) -> dict[str, Checker]:
    """The built-in checkers plus those of the ``ctrlplane.checkers`` entry-point group.

    An entry point names a checker class or a factory (called with no
    arguments) or a checker instance. Its checker is registered under its
    ``type`` attribute (name the entry point after it): a plugin whose type is
    a built-in one (``http``, say) replaces the built-in. Two plugins may not
    provide the same type.

    Raises:
        CheckerLoadError: naming the entry point that cannot be loaded, is not
            a checker, or provides a type another entry point provides too.
    """
    loaded = entry_point_objects(
        group, is_plugin=lambda o: hasattr(o, "check"), error=CheckerLoadError
    )
    return keyed(
        builtin_checkers(),
        ((ref, _checker(ref, obj)) for ref, obj in loaded),
        key=lambda c: c.type,
        error=CheckerLoadError,
        what="type",
    )


async def close_checkers(checkers: Mapping[str, Checker] | Iterable[Checker]) -> None:
    """Call ``close()`` (sync or async) on every checker that has one."""
    await close_all(checkers, "checker")
