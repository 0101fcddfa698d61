"""TelemetryCollector: runs every collector for the running instances of its node's shard."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from datetime import timedelta

from msgspec import Struct, field

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.info import Scope
from ctrlplane.cluster.shards import shard
from ctrlplane.cluster.types import NodeView
from ctrlplane.store.db import Store
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.store.telemetry import Metric, ResourceSnapshot
from ctrlplane.telemetry.errors import (
    CollectorError,
    CollectorLoadError,
    InstanceGoneError,
    TelemetryError,
)
from ctrlplane.telemetry.registry import check_collector, close_collectors
from ctrlplane.types import Collector

DEFAULT_INTERVAL = timedelta(seconds=10)


class CollectFailure(Struct, frozen=True, kw_only=True):
    """One collector that failed for one instance, and why."""

    collector: str
    instance: str
    reason: str


class CollectGap(Struct, frozen=True, kw_only=True):
    """One collector that found nothing to collect for one instance, because
    the instance's process is gone (the reconciler is yet to record it)."""

    collector: str
    instance: str
    reason: str


class Collection(Struct, frozen=True, kw_only=True):
    """What one run collected and stored.

    Attributes:
        instances: Running instances collected.
        metrics: Metrics stored.
        snapshots: Resource snapshots stored.
        skipped: Metrics not stored because their value was not finite.
        failures: Each collector that failed for an instance.
        gaps: Each collector that had nothing to collect for an instance
            whose process is gone: not failures.
    """

    instances: int
    metrics: int
    snapshots: int
    skipped: int
    failures: list[CollectFailure]
    gaps: list[CollectGap] = field(default_factory=list)


class CollectionError(TelemetryError):
    """Some collectors failed for some instances; everything else was collected and stored.

    Attributes:
        failures: Each collector that failed for an instance, and why.
    """

    def __init__(self, failures: list[CollectFailure]) -> None:
        self.failures = failures
        detail = "; ".join(f"{f.collector} on {f.instance!r}: {f.reason}" for f in failures)
        super().__init__(f"telemetry incomplete: {detail}")

    def __reduce__(self) -> tuple[type[CollectionError], tuple[list[CollectFailure]]]:
        return type(self), (self.failures,)


class _Outcome(Struct, frozen=True, kw_only=True):
    metrics: list[Metric]
    snapshot: ResourceSnapshot | None
    reasons: list[str]
    gone: str | None
    """Why the instance has nothing to collect from (:class:`InstanceGoneError`)."""


class TelemetryCollector:
    """Invokes every collector for the running instances of its node and stores what they return.

    Node-scoped: the ``process`` collector reads the instance's local
    process, so an instance's telemetry is collected on the node it is placed
    on; instances placed on no live node are spread over the live nodes as
    the health checks are (:func:`~ctrlplane.cluster.shards.shard`). Without
    a node view (``nodes``), a run collects every running instance.

    Each run calls ``collect_metrics`` and ``collect_resources`` of every
    registered collector for every instance recorded as running, at most
    ``concurrency`` (collector, instance) pairs at once, each pair within
    ``collect_timeout``. Everything the run collected is stored in one
    batched write at its end. A collector that raises, times out or returns
    something else than it should fails for that instance alone: the others
    are collected and stored, and then the run fails with a
    :class:`CollectionError` naming every failure.

    An instance whose process is gone (a collector raised
    :class:`~ctrlplane.telemetry.InstanceGoneError`; it exited and the
    reconciler is yet to record it) is a gap in its telemetry, not a failure:
    it is logged at info level, and so are the other collectors' failures
    for it in that run (its metrics endpoint went with it).

    Register collectors with :meth:`register_collector`; the control plane
    adds the built-in ``process`` and ``prometheus`` collectors and those of
    the ``ctrlplane.collectors`` entry-point group when it starts.

    Args:
        store: The open store.
        collectors: The collectors to start with (a mapping by name, or any
            iterable of collectors).
        interval: How often to run (``Config.telemetry_flush_interval``).
        concurrency: (collector, instance) pairs in flight at once
            (``Config.telemetry_concurrency``).
        collect_timeout: How long one collector may take for one instance.
        nodes: Which nodes are live, and this process's own (the control
            plane sets it at start, before the worker is registered).
    """

    name = "telemetry_collector"
    scope = Scope.NODE

    def __init__(
        self,
        store: Store,
        collectors: Mapping[str, Collector] | Iterable[Collector] = (),
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        concurrency: int = 16,
        collect_timeout: timedelta = timedelta(seconds=10),
        nodes: NodeView | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.interval = interval
        # A run takes as long as its slowest pairs plus queueing; it must not
        # be cut off at a short interval.
        self.timeout = max(interval, timedelta(seconds=60))
        self.nodes = nodes
        self._store = store
        self._concurrency = concurrency
        self._collect_timeout = collect_timeout
        self._collectors: dict[str, Collector] = {}
        values = collectors.values() if isinstance(collectors, Mapping) else collectors
        for collector in values:
            self.register_collector(collector)

    @property
    def collectors(self) -> dict[str, Collector]:
        """The registered collectors, by name (a copy)."""
        return dict(self._collectors)

    def register_collector(self, collector: Collector) -> None:
        """Add ``collector``; it is used from the next run on.

        A collector registered before the control plane starts replaces the
        built-in or plugin collector of the same name.

        Raises:
            CollectorLoadError: it is not a collector, or its name is taken.
        """
        checked = check_collector(repr(collector), collector)
        if checked.name in self._collectors:
            raise CollectorLoadError(
                repr(checked.name), "a collector with this name is registered already"
            )
        self._collectors[checked.name] = checked

    def register_defaults(self, collectors: Mapping[str, Collector]) -> None:
        """Register each of ``collectors`` whose name is not taken yet: the
        built-ins and plugins, which collectors registered earlier replace."""
        for name, collector in collectors.items():
            if name not in self._collectors:
                self.register_collector(collector)

    async def close(self) -> None:
        """Close every collector that has a ``close()`` (the Prometheus one's HTTP session)."""
        await close_collectors(self._collectors)

    async def run(self, ctx: RunContext) -> None:
        collection = await self.collect()
        for g in collection.gaps:
            ctx.log.info(
                "telemetry gap: the instance's process is gone",
                collector=g.collector,
                instance=g.instance,
                reason=g.reason,
            )
        for f in collection.failures:
            ctx.log.warning(
                "telemetry collection failed",
                collector=f.collector,
                instance=f.instance,
                reason=f.reason,
            )
        if collection.skipped:
            ctx.log.debug("non-finite metric values not stored", skipped=collection.skipped)
        if collection.failures:
            raise CollectionError(collection.failures)

    async def collect(self) -> Collection:
        """Collect from this node's running instances once and store it all in one batch."""
        running = [i for i in await self._store.instances.all() if i.state is InstanceState.RUNNING]
        if self.nodes is not None:
            running = shard(running, self.nodes.name, self.nodes.live())
        pairs = [(c, i) for i in running for c in list(self._collectors.values())]
        outcomes: list[_Outcome | None] = [None] * len(pairs)
        next_index = iter(range(len(pairs)))

        # A fixed pool of workers over the pairs, as the HealthRunner does,
        # rather than a task per pair behind a semaphore.
        async def work() -> None:
            for n in next_index:
                outcomes[n] = await self._invoke(*pairs[n])

        await asyncio.gather(*(work() for _ in range(min(self._concurrency, len(pairs)))))
        metrics = snapshots = skipped = 0
        failures: list[CollectFailure] = []
        gaps: list[CollectGap] = []
        gone = {i.id for (_, i), o in zip(pairs, outcomes, strict=True) if o and o.gone}
        for (collector, instance), outcome in zip(pairs, outcomes, strict=True):
            assert outcome is not None  # every pair was taken by a worker
            if instance.id in gone and (outcome.gone or outcome.reasons):
                reasons = [outcome.gone] if outcome.gone else outcome.reasons
                gaps.append(
                    CollectGap(
                        collector=collector.name, instance=instance.name, reason="; ".join(reasons)
                    )
                )
            elif outcome.reasons:
                failures.append(
                    CollectFailure(
                        collector=collector.name,
                        instance=instance.name,
                        reason="; ".join(outcome.reasons),
                    )
                )
            if not outcome.metrics and outcome.snapshot is None:
                continue
            left_out = self._store.telemetry.record(
                instance.id, collector.name, outcome.metrics, outcome.snapshot
            )
            skipped += left_out
            metrics += len(outcome.metrics) - left_out
            snapshots += outcome.snapshot is not None
        # One transaction for the whole run; failures are told only once the
        # rest is on disk.
        await self._store.flush()
        return Collection(
            instances=len(running),
            metrics=metrics,
            snapshots=snapshots,
            skipped=skipped,
            failures=failures,
            gaps=gaps,
        )

    async def _invoke(self, collector: Collector, instance: Instance) -> _Outcome:
        """Both methods of ``collector`` for ``instance``; never raises for a collector's fault."""
        metrics: list[Metric] = []
        snapshot: ResourceSnapshot | None = None
        reasons: list[str] = []
        gone: list[str] = []
        seconds = self._collect_timeout.total_seconds()
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            async with asyncio.timeout_at(deadline):
                got = await _attempt(collector.collect_metrics(instance), reasons, gone)
                if got is not None:
                    metrics = _metrics(got, reasons)
                if not gone:
                    got = await _attempt(collector.collect_resources(instance), reasons, gone)
                    if got is not None:
                        snapshot = _snapshot(got, reasons)
        except TimeoutError:
            reasons.append(f"timed out after {seconds:g}s")
        return _Outcome(
            metrics=metrics, snapshot=snapshot, reasons=reasons, gone=gone[0] if gone else None
        )


async def _attempt(call: Awaitable[object], reasons: list[str], gone: list[str]) -> object:
    """Await ``call``; a failure is noted in ``reasons`` (an instance with no
    process left, in ``gone``) and gives ``None``.

    The caller's deadline is not caught here: it cancels ``call``, and the
    cancellation passes through.
    """
    try:
        return await call
    except InstanceGoneError as exc:
        gone.append(exc.reason)
    except CollectorError as exc:
        reasons.append(exc.reason)
    except Exception as exc:  # one collector's fault stays with that collector
        reasons.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return None


def _metrics(got: object, reasons: list[str]) -> list[Metric]:
    if isinstance(got, list) and all(isinstance(m, Metric) for m in got):
        return got
    reasons.append(f"collect_metrics returned {type(got).__name__}, not a list of Metric")
    return []


def _snapshot(got: object, reasons: list[str]) -> ResourceSnapshot | None:
    if isinstance(got, ResourceSnapshot):
        return got
    reasons.append(f"collect_resources returned {type(got).__name__}, not a ResourceSnapshot")
    return None
