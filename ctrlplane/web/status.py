"""What the status page shows, gathered from the control API: ``GET /api/status``.

Workers are asked for over NATS (the ``workers`` endpoint is scatter: every
process answers for its own), so a page served by any process shows every
process's workers. Nodes, instances, checks and certificates come from the
same store for every process of a cluster, so this process's domain handlers
answer them in-process. A part that fails is named in ``problems`` and the
rest is shown all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from msgspec import Struct, field

from ctrlplane.actors.info import WorkerInfo
from ctrlplane.api.client import list_workers
from ctrlplane.api.domain import DomainApi
from ctrlplane.api.messages import (
    CertsRequest,
    CertView,
    CheckView,
    HealthRequest,
    InstancesRequest,
    InstanceView,
    NodesRequest,
)
from ctrlplane.bus.connection import Bus
from ctrlplane.cluster.nodes import NodeInfo

__all__ = ["Status", "StatusSource"]

log = structlog.get_logger("ctrlplane.web")

T = TypeVar("T")

PART_TIMEOUT = timedelta(seconds=5)
"""How long one part (workers, nodes, ...) may take before it is reported as a problem."""


class Status(Struct, frozen=True, kw_only=True):
    """The status page's data, as ``GET /api/status`` answers it (durations in seconds).

    Attributes:
        generated: When it was gathered.
        process: The process that served it.
        node: That process's node.
        workers: Every process's workers, by name then process.
        nodes: The cluster's nodes.
        instances: Every recorded instance with its state and worst health.
        checks: Every health check of every instance.
        certs: Every domain and its current certificate.
        problems: The parts that could not be gathered, and why; absent when none.
    """

    generated: datetime
    process: str
    node: str
    workers: list[WorkerInfo] = field(default_factory=list)
    nodes: list[NodeInfo] = field(default_factory=list)
    instances: list[InstanceView] = field(default_factory=list)
    checks: list[CheckView] = field(default_factory=list)
    certs: list[CertView] = field(default_factory=list)
    problems: dict[str, str] | None = None


class StatusSource:
    """Gathers :class:`Status`; concurrent callers share one gathering, and an
    answer younger than ``fresh`` is given again, so that many open pages
    cost the cluster no more than one.

    Args:
        bus: The process's connected bus.
        domain: The process's domain handlers.
        process: The process's id.
        node: The process's node.
        fresh: How long an answer is reused.
        workers_within: How long to gather the processes' ``workers`` answers at most.
    """

    def __init__(
        self,
        bus: Bus,
        domain: DomainApi,
        *,
        process: str,
        node: str,
        fresh: timedelta = timedelta(seconds=1),
        workers_within: timedelta = timedelta(seconds=2),
    ) -> None:
        self._bus = bus
        self._domain = domain
        self._process = process
        self._node = node
        self._fresh = fresh.total_seconds()
        self._workers_within = workers_within
        self._last: tuple[float, Status] | None = None
        self._gathering: asyncio.Future[Status] | None = None

    async def status(self) -> Status:
        """The cluster's status, at most ``fresh`` old."""
        if self._last is not None and time.monotonic() - self._last[0] < self._fresh:
            return self._last[1]
        if self._gathering is None:
            task = asyncio.get_running_loop().create_task(self._gather(), name="status-page")
            self._gathering = task
            task.add_done_callback(self._gathered)
        # Shielded: one caller going away must not cancel the others' answer.
        return await asyncio.shield(self._gathering)

    async def close(self) -> None:
        """Cancel a gathering in flight (the server is stopping; nobody waits for it)."""
        task, self._gathering = self._gathering, None
        if task is not None:
            task.cancel()
            # wait, not await: the task's cancellation is not ours to raise.
            await asyncio.wait([task])

    def _gathered(self, task: asyncio.Future[Status]) -> None:
        self._gathering = None
        if not task.cancelled() and task.exception() is None:
            self._last = (time.monotonic(), task.result())

    async def _gather(self) -> Status:
        problems: dict[str, str] = {}
        generated = datetime.now(UTC)
        workers, nodes, instances, checks, certs = await asyncio.gather(
            _part("workers", self._workers(), problems),
            _part("nodes", self._nodes(), problems),
            _part("instances", self._instances(), problems),
            _part("checks", self._checks(), problems),
            _part("certs", self._certs(), problems),
        )
        return Status(
            generated=generated,
            process=self._process,
            node=self._node,
            workers=workers or [],
            nodes=nodes or [],
            instances=instances or [],
            checks=checks or [],
            certs=certs or [],
            problems=problems or None,
        )

    async def _workers(self) -> list[WorkerInfo]:
        replies = await list_workers(self._bus, within=self._workers_within)
        if not replies:
            # Our own process answers too: none at all means the request went nowhere.
            raise RuntimeError("no process answered the workers request")
        found = [w for r in replies for w in r.workers]
        found.sort(key=lambda w: (w.name, w.process))
        return found

    async def _nodes(self) -> list[NodeInfo]:
        return (await self._domain.nodes(NodesRequest())).nodes

    async def _instances(self) -> list[InstanceView]:
        return (await self._domain.instances(InstancesRequest())).instances

    async def _checks(self) -> list[CheckView]:
        return (await self._domain.health(HealthRequest())).checks

    async def _certs(self) -> list[CertView]:
        return (await self._domain.certs(CertsRequest())).certs


async def _part(name: str, gather: Awaitable[T], problems: dict[str, str]) -> T | None:
    """``gather``'s result, or None with the reason in ``problems``."""
    try:
        async with asyncio.timeout(PART_TIMEOUT.total_seconds()):
            return await gather
    except TimeoutError:
        problems[name] = f"no answer within {PART_TIMEOUT.total_seconds():g}s"
    except Exception as exc:  # one part failing must not blank the whole page
        log.warning("status page part failed", part=name, error=str(exc))
        problems[name] = f"{type(exc).__name__}: {exc}"
    return None
