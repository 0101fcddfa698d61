"""The shapes plugins implement: Protocols and aliases only.

A provider runs instances (``ctrlplane.providers`` entry points); a checker
executes one type of health check (``ctrlplane.checkers`` entry points). The
worker shape is :class:`ctrlplane.actors.Worker`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol, runtime_checkable

from msgspec import Struct

from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance, InstanceState


class Observation(Struct, frozen=True, kw_only=True):
    """What a provider sees of one instance.

    Attributes:
        state: ``running``, ``stopped`` or ``failed`` (exited with an error).
        detail: A human-readable note (an exit code, "no such process").
    """

    state: InstanceState
    detail: str = ""


class Probe(Struct, frozen=True, kw_only=True):
    """What one execution of a check found; the runner adds timing and status.

    Attributes:
        outcome: ``pass``, ``fail``, or ``unknown`` when the check could not be
            executed at all (a malformed target); ``message`` says why.
        message: What was seen ("200 OK", "connection refused", ...).
    """

    outcome: Outcome
    message: str = ""


@runtime_checkable
class Provider(Protocol):
    """Runs instances somewhere: OS processes, containers, VMs.

    Every method may be called from any process of the control plane, also
    for instances another process started: the handle it returns from
    :meth:`start` is all it may rely on.
    """

    name: str

    async def start(self, instance: Instance) -> str:
        """Start ``instance``; return the handle that identifies what was started."""
        ...

    async def stop(self, instance: Instance, grace: timedelta) -> None:
        """Stop ``instance``: politely, then forcibly after ``grace``. Idempotent."""
        ...

    async def status(self, instances: Sequence[Instance]) -> dict[str, Observation]:
        """The actual state of each instance, keyed by instance id."""
        ...

    async def pids(self, instance: Instance) -> list[int]:
        """The OS processes of a running instance (for telemetry); empty if none."""
        ...


@runtime_checkable
class Checker(Protocol):
    """Executes one type of health check."""

    type: str

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Execute ``spec`` once; the caller enforces ``spec.timeout``."""
        ...
