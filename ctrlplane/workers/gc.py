"""GarbageCollector: deletes what is past retention, in small batches that never starve writers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.bus.messages import Event
from ctrlplane.errors import PartialFailure
from ctrlplane.events import GcCompleted, data_of
from ctrlplane.store.db import Store
from ctrlplane.store.deployments import FINISHED

DEFAULT_INTERVAL = timedelta(minutes=5)

KINDS = ("deployments", "health_results", "audit", "metrics", "resource_snapshots")
"""What is collected, in this order; the keys of ``gc.completed``'s counts."""

_FINISHED_SQL = ", ".join(f"'{s.value}'" for s in sorted(FINISHED))

# Each statement deletes at most one batch, picked by an index so that finding
# it costs no more than deleting it (no sort, no scan of what is kept).
_BY_AGE = {
    "deployments": (
        "DELETE FROM deployments WHERE rowid IN (SELECT rowid FROM deployments "
        f"WHERE finished < ? AND state IN ({_FINISHED_SQL}) ORDER BY finished LIMIT ?)"
    ),
    "audit": (
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < ? ORDER BY time LIMIT ?)"
    ),
    "metrics": (
        "DELETE FROM metrics WHERE id IN "
        "(SELECT id FROM metrics WHERE time < ? ORDER BY time LIMIT ?)"
    ),
    "resource_snapshots": (
        "DELETE FROM resource_snapshots WHERE id IN "
        "(SELECT id FROM resource_snapshots WHERE time < ? ORDER BY time LIMIT ?)"
    ),
}
# Audit entries beyond the newest ``audit_max_rows`` (by insertion order, so
# an event stamped with a forged old or future time is no way around it).
_AUDIT_CUTOFF = "SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?"
_AUDIT_BEYOND = (
    "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id <= ? ORDER BY id LIMIT ?)"
)
# The (instance, check) pairs one index seek at a time: SELECT DISTINCT would
# read the whole index in one statement, holding the shared connection.
_NEXT_CHECK = (
    "SELECT instance_id, check_name FROM health_results "
    "WHERE (instance_id, check_name) > (?, ?) ORDER BY instance_id, check_name LIMIT 1"
)
# The newest result beyond the limit: it and everything older goes.
_CUTOFF = (
    "SELECT time, id FROM health_results WHERE instance_id = ? AND check_name = ? "
    "ORDER BY time DESC, id DESC LIMIT 1 OFFSET ?"
)
_DELETE_RESULTS = (
    "DELETE FROM health_results WHERE id IN (SELECT id FROM health_results "
    "WHERE instance_id = ? AND check_name = ? AND time <= ? AND (time < ? OR id <= ?) "
    "ORDER BY time LIMIT ?)"
)


class GcError(PartialFailure):
    """Some kinds could not be collected; the others were."""

    what = "gc incomplete"


class GarbageCollector:
    """Deletes expired records so that the store stays small.

    Completed deployments older than ``deployment_retention``, health check
    results beyond the newest ``health_history_limit`` of each (instance,
    check), audit entries older than ``audit_retention`` or beyond the newest
    ``audit_max_rows``, and metrics and resource snapshots older than
    ``telemetry_retention``.

    Deletes run in batches of at most ``batch_size`` rows, each its own short
    transaction on the store's shared writer, with ``batch_pause`` after
    every ``batch_size`` rows deleted: the batched writers of results and
    telemetry get the connection between any two batches, so they wait for
    one batch at most, and other processes get the file. A kind that
    fails is recorded and the others are still collected; the run then fails
    naming it. Every run publishes ``gc.completed`` with the rows deleted per
    kind.

    Args:
        store: The open store.
        interval: How often to run (``Config.gc_interval``).
        deployment_retention: Keep completed deployments this long.
        health_history_limit: Results kept per (instance, check).
        audit_retention: Keep audit entries this long.
        audit_max_rows: Keep at most this many audit entries (the newest
            recorded); ``None`` bounds them by age only.
        telemetry_retention: Keep metrics and resource snapshots this long.
        batch_size: Rows one delete takes at most.
        batch_pause: Pause between two batches.
    """

    name = "gc"

    def __init__(
        self,
        store: Store,
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        deployment_retention: timedelta = timedelta(days=30),
        health_history_limit: int = 1000,
        audit_retention: timedelta = timedelta(days=90),
        audit_max_rows: int | None = None,
        telemetry_retention: timedelta = timedelta(days=7),
        batch_size: int = 1000,
        batch_pause: timedelta = timedelta(milliseconds=10),
    ) -> None:
        if batch_size < 1 or health_history_limit < 0:
            raise ValueError("batch_size must be >= 1 and health_history_limit >= 0")
        if audit_max_rows is not None and audit_max_rows < 1:
            raise ValueError("audit_max_rows must be >= 1")
        self._audit_max_rows = audit_max_rows
        self.interval = interval
        self._store = store
        self._retention = {
            "deployments": deployment_retention,
            "audit": audit_retention,
            "metrics": telemetry_retention,
            "resource_snapshots": telemetry_retention,
        }
        self._history_limit = health_history_limit
        self._batch_size = batch_size
        self._pause = batch_pause.total_seconds()
        self._batches = 0
        self._since_pause = 0

    async def run(self, ctx: RunContext) -> None:
        report = await self.collect()
        await ctx.publish(Event(type="gc.completed", source=self.name, data=data_of(report)))
        if any(report.deleted.values()):
            ctx.log.info("garbage collected", deleted=report.deleted, seconds=report.seconds)
        if report.failed:
            raise GcError(report.failed)

    async def collect(self, now: datetime | None = None) -> GcCompleted:
        """Delete everything past retention at ``now`` (default: the current time).

        Returns:
            Rows deleted per kind, the kinds that failed and why, the number
            of delete statements and the seconds it all took.
        """
        now = now or datetime.now(UTC)
        started = time.perf_counter()
        self._batches = self._since_pause = 0
        deleted: dict[str, int] = {}
        failed: dict[str, str] = {}
        for kind in KINDS:
            try:
                if kind == "health_results":
                    deleted[kind] = await self._collect_results()
                else:
                    cutoff = (now - self._retention[kind]).timestamp()
                    deleted[kind] = await self._delete(_BY_AGE[kind], (cutoff,))
                if kind == "audit":
                    deleted[kind] += await self._collect_audit_beyond_cap()
            except Exception as exc:  # one kind's failure must not stop the others
                deleted[kind] = 0
                failed[kind] = f"{type(exc).__name__}: {exc}"
        return GcCompleted(
            deleted=deleted,
            failed=failed,
            batches=self._batches,
            seconds=round(time.perf_counter() - started, 3),
        )

    async def _collect_audit_beyond_cap(self) -> int:
        if self._audit_max_rows is None:
            return 0
        row = await self._store.db.fetchone(_AUDIT_CUTOFF, (self._audit_max_rows,))
        if row is None:
            return 0
        return await self._delete(_AUDIT_BEYOND, (int(row[0]),))

    async def _collect_results(self) -> int:
        db = self._store.db
        total = 0
        last: tuple[str, str] = ("", "")
        while True:
            row = await db.fetchone(_NEXT_CHECK, last)
            if row is None:
                return total
            last = (str(row[0]), str(row[1]))
            cutoff = await db.fetchone(_CUTOFF, (*last, self._history_limit))
            if cutoff is not None:
                t, rowid = float(cutoff[0]), int(cutoff[1])
                total += await self._delete(_DELETE_RESULTS, (*last, t, t, rowid))

    async def _delete(self, sql: str, params: Sequence[object]) -> int:
        """Run ``sql`` (which takes a trailing LIMIT) batch after batch until one falls short.

        The pause comes after each batch's worth of deleted rows, not after
        every statement: collecting a few rows from each of thousands of
        checks must not take thousands of pauses. Writers get the lock
        between any two statements anyway (the lock is fair).
        """
        total = 0
        while True:
            if self._since_pause >= self._batch_size and self._pause > 0:
                await asyncio.sleep(self._pause)
                self._since_pause = 0
            self._batches += 1
            async with self._store.writer.transaction() as db:
                count = await db.execute(sql, (*params, self._batch_size))
            total += count
            self._since_pause += count
            if count < self._batch_size:
                return total
