"""``/metrics``: the control plane's Prometheus metrics, in a registry of its own.

Two kinds of figures. What happens in this process (runs, their outcomes and
durations, running runs, tick lateness, skipped ticks, dead letters) is
counted as it happens: :class:`Metrics` is the scheduler's
:class:`~ctrlplane.actors.types.RunObserver`. What is state elsewhere
(consumer backlogs on JetStream, instances, checks and certificates in the
store, the NATS connection) is read when scraped, each source within
:data:`SCRAPE_TIMEOUT`; a source that does not answer keeps its last reading,
so a scrape never fails because NATS or the store is away.

The registry is per control plane, never prometheus-client's global one: a
process (the test suite, say) may run several control planes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ctrlplane.actors.info import WorkerKind
from ctrlplane.actors.runs import Outcome
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import InstanceState

if TYPE_CHECKING:
    from ctrlplane.actors.spec import WorkerSpec
    from ctrlplane.bus.connection import Bus
    from ctrlplane.store.db import Store

log = structlog.get_logger("ctrlplane.web")

SCRAPE_TIMEOUT = timedelta(seconds=2)
"""How long a scrape waits for each source (JetStream, the store) before it
answers with that source's last reading."""

# Runs last from milliseconds (an event handler) to the minutes of a sweep.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A tick on time starts within milliseconds; one held up by a busy worker or
# a stalled loop, seconds or an interval later.
_LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# The server's page size for CONSUMER.LIST: a shorter page is the last.
_CONSUMER_PAGE = 256


class _Series:
    """One worker's children of the per-worker metrics, looked up once:
    ``labels()`` takes a lock and hashes its labels on every call."""

    def __init__(self, metrics: Metrics, worker: str) -> None:
        self.running = metrics.running.labels(worker=worker)
        self.duration = metrics.duration.labels(worker=worker)
        self.lateness = metrics.lateness.labels(worker=worker)
        self.skipped = metrics.skipped.labels(worker=worker)
        self.dead_letters = metrics.dead_letters.labels(worker=worker)
        self._runs = metrics.runs
        self._worker = worker
        self._by_outcome: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self._runs.labels(
                worker=self._worker, outcome=outcome
            )
        return child


class Metrics:
    """The metrics of one control plane, and how they are read.

    Args:
        bus: Where the consumer backlogs and the connection state are read.
        store: Where instances, checks and certificates are counted.
        workers: The workers whose consumers' backlogs are read (the
            scheduler's ``specs``).
        timeout: How long a scrape waits for each source.
    """

    content_type = CONTENT_TYPE_LATEST
    """The ``Content-Type`` of :meth:`render`'s text."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        workers: Callable[[], Iterable[WorkerSpec]],
        *,
        timeout: timedelta = SCRAPE_TIMEOUT,
    ) -> None:
        self._bus = bus
        self._store = store
        self._workers = workers
        self._timeout = timeout.total_seconds()
        self.registry = CollectorRegistry()
        """This control plane's registry (never the global default one)."""
        r = self.registry
        self.runs = Counter(
            "ctrlplane_runs",
            "Runs recorded by this process, by worker and outcome "
            "(skipped ticks and dead-lettered messages included).",
            ["worker", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "ctrlplane_run_duration_seconds",
            "How long this process's runs took, by worker.",
            ["worker"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "ctrlplane_running_runs", "Runs in progress in this process.", ["worker"], registry=r
        )
        self.lateness = Histogram(
            "ctrlplane_tick_lateness_seconds",
            "How long after its tick's scheduled time (or this process's start, if later) "
            "a periodic run started, by worker.",
            ["worker"],
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.skipped = Counter(
            "ctrlplane_skipped_ticks",
            "Ticks skipped by this process: coalesced into a newer one, or of a slot already done.",
            ["worker"],
            registry=r,
        )
        self.dead_letters = Counter(
            "ctrlplane_dead_letters",
            "Messages this process dead-lettered, by worker.",
            ["worker"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "ctrlplane_event_loop_lag_seconds",
            "The longest the event loop was late on a 0.5 s timer since the previous scrape.",
            registry=r,
        )
        self._readings = _Readings(bus)
        r.register(self._readings)
        ProcessCollector(registry=r)
        self._series: dict[str, _Series] = {}
        # A process runs the current slot of each worker as it comes up, long
        # after that slot began: that is no lateness, so it counts from here.
        self._since = time.time()

    # ------------------------------------------------------- the run observer

    def _of(self, worker: str) -> _Series:
        series = self._series.get(worker)
        if series is None:
            series = self._series[worker] = _Series(self, worker)
        return series

    def run_started(self, worker: str, started: float, scheduled: float | None) -> None:
        """A run of ``worker`` began at ``started``, for a tick due at ``scheduled``."""
        series = self._of(worker)
        series.running.inc()
        if scheduled is not None:
            # Negative only by the skew between the ticker's clock and ours.
            series.lateness.observe(max(started - max(scheduled, self._since), 0.0))

    def run_ended(self, worker: str) -> None:
        """A run of ``worker`` is over."""
        self._of(worker).running.dec()

    def recorded(self, worker: str, outcome: str, duration: float | None) -> None:
        """A row of ``worker`` was recorded: its outcome, and its duration if it ran."""
        series = self._of(worker)
        series.outcome(outcome).inc()
        if duration is not None:
            series.duration.observe(duration)
        if outcome == Outcome.SKIPPED:
            series.skipped.inc()
        elif outcome == Outcome.DEAD_LETTERED:
            series.dead_letters.inc()

    # ----------------------------------------------------------------- scrape

    async def render(self, *, loop_lag: float | None = None) -> bytes:
        """Read what is read at scrape time, then every metric in the text format.

        Args:
            loop_lag: The event loop's longest lateness since the last scrape.
        """
        if loop_lag is not None:
            self.loop_lag.set(loop_lag)
        specs = list(self._workers())
        for spec in specs:
            # Every worker's series from the start, at zero: a rate needs a
            # first sample before the first run, skip or dead letter.
            self._of(spec.name)
        await asyncio.gather(self._read_backlog(specs), self._read_store())
        return generate_latest(self.registry)

    async def _read_backlog(self, specs: list[WorkerSpec]) -> None:
        bus = self._bus
        if not (bus.connected and bus.nc.is_connected):
            # Reconnecting: a request would only wait out the timeout.
            return
        s = bus.subjects
        wanted: dict[tuple[str, str], tuple[str, str]] = {}
        for spec in specs:
            if spec.kind is WorkerKind.PERIODIC:
                wanted[s.ticks_stream, s.tick_consumer(spec.name, spec.node)] = (spec.name, "tick")
            if spec.subscriptions:
                wanted[s.events_stream, s.event_consumer(spec.name, spec.node)] = (
                    spec.name,
                    "event",
                )
        backlog: dict[tuple[str, str], int] = {}
        try:
            async with asyncio.timeout(self._timeout):
                # One listing per stream, not one request per consumer: a
                # thousand workers cost a few requests a scrape.
                for stream in sorted({stream for stream, _ in wanted}):
                    offset = 0
                    while True:
                        page = await bus.js.consumers_info(stream, offset or None)
                        for info in page:
                            key = wanted.get((stream, info.name))
                            if key is not None and info.num_pending is not None:
                                backlog[key] = info.num_pending
                        if len(page) < _CONSUMER_PAGE:
                            break
                        offset += len(page)
        except Exception as exc:  # a source that fails keeps its last reading
            log.warning("consumer backlog not read for /metrics", error=_describe(exc))
            return
        self._readings.backlog = backlog

    async def _read_store(self) -> None:
        try:
            db = self._store.db
            async with asyncio.timeout(self._timeout):
                instances = await db.fetch("SELECT state, COUNT(*) FROM instances GROUP BY state")
                checks = await db.fetch(
                    "SELECT status, COUNT(*) FROM health_checks GROUP BY status"
                )
                # A hostname's current certificate is the one valid longest
                # (CertificateStore.current).
                certs = await db.fetch(
                    "SELECT hostname, MAX(not_after) FROM certificates GROUP BY hostname"
                )
        except Exception as exc:  # a source that fails keeps its last reading
            log.warning("store not read for /metrics", error=_describe(exc))
            return
        self._readings.instances = {str(state): int(n) for state, n in instances}
        self._readings.checks = {str(status): int(n) for status, n in checks}
        self._readings.certificates = {str(host): float(str(t)) for host, t in certs}


class _Readings(Collector):
    """The figures read at scrape time, as metric families."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.backlog: dict[tuple[str, str], int] = {}
        # None until the store has answered once: zeros would be a reading.
        self.instances: dict[str, int] | None = None
        self.checks: dict[str, int] | None = None
        self.certificates: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        backlog = GaugeMetricFamily(
            "ctrlplane_consumer_backlog",
            "Messages waiting for a worker on its JetStream consumer (num_pending), "
            "by worker and source (tick or event).",
            labels=["worker", "source"],
        )
        for (worker, source), pending in sorted(self.backlog.items()):
            backlog.add_metric([worker, source], pending)
        yield backlog
        # Every state and status, at zero when none is in it: a series that
        # vanishes cannot be told from one that was never scraped.
        yield _counts(
            "ctrlplane_instances",
            "Instances by recorded state.",
            "state",
            [s.value for s in InstanceState],
            self.instances,
        )
        yield _counts(
            "ctrlplane_checks",
            "Health checks by current status.",
            "status",
            [s.value for s in HealthStatus],
            self.checks,
        )
        expiry = GaugeMetricFamily(
            "ctrlplane_certificate_expiry_timestamp_seconds",
            "When the current certificate of each declared domain expires (Unix time).",
            labels=["hostname"],
        )
        for host, not_after in sorted(self.certificates.items()):
            expiry.add_metric([host], not_after)
        yield expiry
        yield from self._nats()

    def _nats(self) -> Iterator[Metric]:
        bus = self._bus
        connected = bus.connected and bus.nc.is_connected
        yield GaugeMetricFamily(
            "ctrlplane_nats_connected",
            "1 while this process is connected to NATS, 0 otherwise.",
            value=1 if connected else 0,
        )
        reconnects = CounterMetricFamily(
            "ctrlplane_nats_reconnects",
            "Times this process's NATS connection was re-established.",
        )
        if bus.connected:  # a closed connection's count is gone with it
            reconnects.add_metric([], bus.nc.stats["reconnects"])
        yield reconnects


def _counts(
    name: str, documentation: str, label: str, known: list[str], counts: dict[str, int] | None
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    if counts is None:
        return family
    for value in sorted({*known, *counts}):
        family.add_metric([value], counts.get(value, 0))
    return family


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
