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

from ctrlplane.store.certs import Certificate, Domain
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.store.telemetry import Metric, ResourceSnapshot


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

    A provider whose instances live on the host that started them (OS
    processes) says so with a class attribute ``host_bound = True`` and
    implements :class:`HostBoundProvider`; without the attribute a provider
    is not host-bound (a remote API that any node may call). Instances of a
    host-bound provider are placed on a node, and only that node starts,
    stops and watches them.
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
class HostBoundProvider(Provider, Protocol):
    """A provider whose handles mean something only on the host that started them."""

    host_bound: bool

    async def local_instances(self) -> dict[str, str]:
        """Instance id to handle of each running process this host started for an
        instance, whatever the store records now (another node's handle, or no
        instance at all)."""
        ...

    async def stop_local(self, instance_id: str, grace: timedelta) -> None:
        """Stop this host's process of instance ``instance_id`` if one runs, as
        :meth:`Provider.stop` would; the store need not know it any more."""
        ...


@runtime_checkable
class Checker(Protocol):
    """Executes one type of health check.

    The HealthRunner cancels a check after ``spec.timeout`` and records it as
    failed; a checker need not time itself.
    """

    type: str

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Execute ``spec`` once; the caller enforces ``spec.timeout``."""
        ...


@runtime_checkable
class Collector(Protocol):
    """Gathers the telemetry of one instance; the TelemetryCollector calls it
    for every running instance on each run.

    Either method may raise: the failure is recorded for this collector and
    instance alone. A collector with nothing to say returns ``[]`` or ``None``
    (an instance without a ``metrics_url`` has no Prometheus metrics). An
    optional ``close()`` (sync or async) is called when the control plane stops.
    """

    name: str

    async def collect_metrics(self, instance: Instance) -> list[Metric]:
        """The instance's metrics now."""
        ...

    async def collect_resources(self, instance: Instance) -> ResourceSnapshot | None:
        """What the instance's processes use now, or ``None`` if this collector does not tell."""
        ...


@runtime_checkable
class Router(Protocol):
    """Routes hostnames to instances and keeps their TLS certificates.

    One router per control plane: the built-in ``file`` router, or one that a
    package declares in the ``ctrlplane.routers`` entry-point group. Every
    method may be called from any process, and all but ``provision_cert`` are
    idempotent.
    """

    name: str

    async def add_route(self, hostname: str, instance: str) -> None:
        """Send requests for ``hostname`` to ``instance``."""
        ...

    async def update_route(self, hostname: str, instance: str) -> None:
        """Send requests for an already routed ``hostname`` to another instance."""
        ...

    async def remove_route(self, hostname: str) -> None:
        """Stop routing ``hostname``."""
        ...

    async def add_domain(self, domain: Domain) -> None:
        """Route ``domain`` over TLS, with its current certificate."""
        ...

    async def remove_domain(self, hostname: str) -> None:
        """Stop routing ``hostname`` and forget its certificates."""
        ...

    async def provision_cert(self, domain: Domain) -> Certificate:
        """Have ``domain``'s certificate issued and put in place (atomically), and
        return it; the caller records it."""
        ...
