"""GarbageCollector: deletes exactly what is past retention, in bounded batches, kind by kind."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from ctrlplane.bus import Event
from ctrlplane.store import Store
from ctrlplane.store.health import CheckResult, HealthStatus, Outcome
from ctrlplane.workers.gc import GarbageCollector, GcError
from tests.helpers import sqlite_connection, tick_context, wait_for

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
NO_PAUSE = timedelta(0)


def _ago(delta: timedelta) -> float:
    return (NOW - delta).timestamp()


async def _insert(store: Store, sql: str, rows: Sequence[Sequence[object]]) -> None:
    async with store.writer.transaction() as db:
        await db.executemany(sql, rows)


async def _ids(store: Store, table: str, column: str = "id") -> list[object]:
    return [r[0] for r in await store.db.fetch(f"SELECT {column} FROM {table} ORDER BY {column}")]


async def _deployment(store: Store, id_: str, state: str, finished: float | None) -> None:
    await _insert(
        store,
        "INSERT INTO deployments (id, instance_id, instance_name, spec_hash, state, started, "
        "finished) VALUES (?, 'i-1', 'web', 'h', ?, ?, ?)",
        [(id_, state, (finished or _ago(100 * DAY)) - 1, finished)],
    )


async def _audit(store: Store, rows: list[tuple[int, float]]) -> None:
    await _insert(
        store,
        "INSERT INTO audit (id, event_id, type, source, time, data) "
        "VALUES (?, ?, 't', 's', ?, '{}')",
        [(id_, f"e{id_}", t) for id_, t in rows],
    )


async def _metrics(store: Store, rows: list[tuple[int, float]]) -> None:
    await _insert(
        store,
        "INSERT INTO metrics (id, instance_id, collector, name, type, value, labels, time) "
        "VALUES (?, 'i-1', 'process', 'cpu', 'gauge', 1.0, '{}', ?)",
        rows,
    )


async def _snapshots(store: Store, rows: list[tuple[int, float]]) -> None:
    await _insert(
        store,
        "INSERT INTO resource_snapshots (id, instance_id, collector, time) "
        "VALUES (?, 'i-1', 'process', ?)",
        rows,
    )


async def _results(store: Store, rows: list[tuple[int, str, str, float]]) -> None:
    await _insert(
        store,
        "INSERT INTO health_results (id, instance_id, check_name, time, outcome, status) "
        "VALUES (?, ?, ?, ?, 'pass', 'healthy')",
        rows,
    )


def _gc(store: Store, **kw: object) -> GarbageCollector:
    settings: dict[str, object] = {
        "deployment_retention": 30 * DAY,
        "health_history_limit": 3,
        "audit_retention": 90 * DAY,
        "telemetry_retention": 7 * DAY,
        "batch_pause": NO_PAUSE,
        **kw,
    }
    return GarbageCollector(store, **settings)  # type: ignore[arg-type]


async def test_deletes_exactly_what_is_past_retention(store: Store) -> None:
    just = timedelta(seconds=1)
    for state in ("succeeded", "failed", "rolled_back", "cancelled"):
        await _deployment(store, f"old-{state}", state, _ago(30 * DAY + just))
        await _deployment(store, f"new-{state}", state, _ago(30 * DAY - just))
    # In progress, however old, is never collected.
    await _deployment(store, "old-running", "running", None)
    await _deployment(store, "old-pending", "pending", None)
    await _audit(
        store, [(1, _ago(90 * DAY + just)), (2, _ago(90 * DAY - just)), (3, _ago(0 * DAY))]
    )
    await _metrics(
        store, [(1, _ago(7 * DAY + just)), (2, _ago(8 * DAY)), (3, _ago(7 * DAY - just))]
    )
    await _snapshots(store, [(1, _ago(7 * DAY - just)), (2, _ago(7 * DAY + just))])
    # Limit 3 per (instance, check). i-1/http: 5 results, ids not in time order;
    # i-1/tcp: 2 (all kept); i-2/http: 5, three sharing one time (newest by id wins).
    await _results(
        store,
        [
            (10, "i-1", "http", _ago(5 * DAY)),
            (14, "i-1", "http", _ago(4 * DAY)),
            (11, "i-1", "http", _ago(1 * DAY)),
            (13, "i-1", "http", _ago(3 * DAY)),
            (12, "i-1", "http", _ago(2 * DAY)),
            (20, "i-1", "tcp", _ago(400 * DAY)),
            (21, "i-1", "tcp", _ago(300 * DAY)),
            (30, "i-2", "http", _ago(2 * DAY)),
            (31, "i-2", "http", _ago(2 * DAY)),
            (32, "i-2", "http", _ago(2 * DAY)),
            (33, "i-2", "http", _ago(3 * DAY)),
            (34, "i-2", "http", _ago(1 * DAY)),
        ],
    )

    report = await _gc(store).collect(NOW)

    assert report.failed == {}
    assert report.deleted == {
        "deployments": 4,
        "health_results": 4,
        "audit": 1,
        "metrics": 2,
        "resource_snapshots": 1,
    }
    assert await _ids(store, "deployments") == sorted(
        ["old-running", "old-pending"]
        + [f"new-{s}" for s in ("succeeded", "failed", "rolled_back", "cancelled")]
    )
    assert await _ids(store, "audit") == [2, 3]
    assert await _ids(store, "metrics") == [3]
    assert await _ids(store, "resource_snapshots") == [1]
    assert await _ids(store, "health_results") == [11, 12, 13, 20, 21, 31, 32, 34]

    again = await _gc(store).collect(NOW)
    assert sum(again.deleted.values()) == 0


async def test_newest_results_are_read_through_the_store_after_gc(store: Store) -> None:
    for i in range(6):
        store.health.record(
            [
                CheckResult(
                    instance_id="i-1",
                    check="http",
                    time=NOW - timedelta(minutes=i),
                    outcome=Outcome.PASS,
                    status=HealthStatus.HEALTHY,
                    message=f"#{i}",
                )
            ],
            [],
        )
    await store.flush()
    report = await _gc(store, health_history_limit=2).collect(NOW)
    assert report.deleted["health_results"] == 4
    kept = await store.health.results("i-1", "http")
    assert [r.message for r in kept] == ["#0", "#1"]


async def test_a_failing_kind_does_not_stop_the_others(store: Store) -> None:
    old = _ago(365 * DAY)
    await _deployment(store, "d-old", "succeeded", old)
    await _metrics(store, [(1, old)])
    await _snapshots(store, [(1, old)])
    await _audit(store, [(1, old)])
    await _results(store, [(i, "i-1", "http", old + i) for i in range(5)])
    # A real fault: the audit table is gone.
    async with store.writer.transaction() as db:
        await db.execute("DROP TABLE audit")

    published: list[Event] = []

    ctx = tick_context("gc", published)
    with pytest.raises(
        GcError,
        match=r"gc incomplete: audit: (OperationalError: no such table|UndefinedTableError)",
    ):
        await _gc(store).run(ctx)

    (event,) = published
    assert event.type == "gc.completed"
    assert event.data["deleted"] == {
        "deployments": 1,
        "health_results": 2,
        "audit": 0,
        "metrics": 1,
        "resource_snapshots": 1,
    }
    assert list(event.data["failed"]) == ["audit"]
    for table in ("deployments", "metrics", "resource_snapshots"):
        assert await _ids(store, table) == []
    assert len(await _ids(store, "health_results")) == 3


# SQLite only: it reads the statements from SQLite's trace.
@pytest.mark.sqlite_only
async def test_deletes_run_in_bounded_batches_that_let_writers_in(store: Store) -> None:
    old = _ago(30 * DAY)
    await _metrics(store, [(i, old + i) for i in range(1, 2501)])
    await _results(store, [(i, "i-1", "http", old + i) for i in range(1, 2511)])
    statements: list[str] = []
    when: list[float] = []

    def trace(statement: str) -> None:  # called in the connection's thread
        statements.append(statement)
        when.append(time.monotonic())

    await sqlite_connection(store).set_trace_callback(trace)

    pause = timedelta(milliseconds=20)
    gc = _gc(store, batch_size=1000, health_history_limit=10, batch_pause=pause)
    collecting = asyncio.create_task(gc.collect(NOW))
    # A writer that shows up while GC runs gets in between two batches.
    await wait_for(
        lambda: any(s.startswith("DELETE FROM health_results") for s in statements),
        interval=0.001,
    )
    store.health.record(
        [
            CheckResult(
                instance_id="i-2",
                check="http",
                time=NOW,
                outcome=Outcome.PASS,
                status=HealthStatus.HEALTHY,
            )
        ],
        [],
    )
    await store.flush()
    report = await collecting
    await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]

    assert report.deleted["metrics"] == 2500 and report.deleted["health_results"] == 2500
    deletes = [s for s in statements if s.startswith("DELETE")]
    # 1000 + 1000 + 500 for each of the two; one (empty) batch for each other kind.
    assert Counter(s.split()[2] for s in deletes) == {
        "deployments": 1,
        "health_results": 3,
        "audit": 1,
        "metrics": 3,
        "resource_snapshots": 1,
    }
    assert all(s.endswith("LIMIT 1000)") for s in deletes)
    assert report.batches == len(deletes)
    # Each batch is a transaction of its own, and the writer's insert landed
    # between two of the batches instead of waiting for them all.
    for i, statement in enumerate(statements):
        if statement.startswith("DELETE"):
            assert (statements[i - 1], statements[i + 1]) == ("BEGIN IMMEDIATE", "COMMIT")
    # Deleted: 0 | 1000, 1000, 500 | 0 | 1000, 1000, 500 | 0: a pause follows each full batch.
    starts = [when[i] for i, s in enumerate(statements) if s.startswith("DELETE")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps[i] for i in (1, 2, 5, 6)) >= pause.total_seconds()
    first = statements.index(deletes[0])
    between = statements[first : statements.index(deletes[-1])]
    assert any(s.startswith("INSERT INTO health_results") for s in between)
    assert len(await _ids(store, "metrics")) == 0
    assert len(await _ids(store, "health_results")) == 10 + 1


async def test_audit_entries_beyond_the_row_cap_are_deleted_oldest_recorded_first(
    store: Store,
) -> None:
    # Recent by their own time, even stamped in the future: the cap counts
    # what was recorded, so a forged time is no way around it.
    now = time.time()
    await _audit(store, [(i, now + (DAY.total_seconds() if i == 1 else -i)) for i in range(1, 8)])
    report = await _gc(store, audit_max_rows=3, batch_size=2).collect()
    assert report.deleted["audit"] == 4
    assert await _ids(store, "audit") == [5, 6, 7]
    again = await _gc(store, audit_max_rows=3).collect()
    assert again.deleted["audit"] == 0


def test_an_audit_cap_below_one_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="audit_max_rows"):
        _gc(store, audit_max_rows=0)
