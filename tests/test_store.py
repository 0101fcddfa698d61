"""The store on both backends: records, batched writes, identity; and SQLite's own
(WAL, file locks, several processes on one file), marked where they are SQLite-only."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import msgspec
import pytest

from ctrlplane.actors.runs import new_run_id
from ctrlplane.store import (
    BatchWriter,
    MigrationError,
    NotOpenError,
    Outcome,
    Store,
    Trigger,
    WorkerRun,
)
from ctrlplane.store.health import CheckSpec
from ctrlplane.store.migrations import LATEST
from ctrlplane.store.runs import MAX_ERROR, MAX_REF
from ctrlplane.store.sqlite import (
    migrate,  # the step Store.open() runs, cancelled mid-way
    split_statements,
)
from tests.helpers import make_instance, sqlite_connection
from tests.processes import ROOT


def _run(worker: str = "w", outcome: Outcome = Outcome.OK, **kw: object) -> WorkerRun:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "worker": worker,
        "process": "host:1",
        "trigger": Trigger.TICK,
        "trigger_ref": "w/1",
        "attempt": 1,
        "started": now,
        "finished": now + timedelta(milliseconds=5),
        "outcome": outcome,
        "error": None,
    }
    fields.update(kw)
    return WorkerRun(**fields)  # type: ignore[arg-type]


async def test_open_applies_migrations_in_wal_mode(tmp_path: Path) -> None:
    async with Store(tmp_path / "db.sqlite"):
        pass
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = {r[1] for r in raw.execute("PRAGMA table_info(worker_runs)")}
        assert cols >= {"worker", "process", "trigger", "started", "finished", "outcome", "error"}
    finally:
        raw.close()
    # Opening again applies nothing twice.
    async with Store(tmp_path / "db.sqlite") as again:
        assert await again.runs.list() == []


async def test_a_file_from_newer_code_is_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    raw.execute(f"PRAGMA user_version = {LATEST + 1}")
    raw.close()
    with pytest.raises(MigrationError, match="newer than this code"):
        await Store(tmp_path / "db.sqlite").open()


async def test_runs_round_trip_newest_first(store: Store) -> None:
    old = _run(started=datetime(2026, 1, 1, tzinfo=UTC), outcome=Outcome.ERROR, error="boom")
    new = _run(worker="other")
    store.runs.record(old)
    store.runs.record(new)
    assert await store.runs.list() == [new, old]
    assert await store.runs.list(worker="w") == [old]
    assert await store.runs.list(outcome=Outcome.ERROR) == [old]


async def test_long_errors_and_refs_are_clipped_with_a_marker(store: Store) -> None:
    store.runs.record(_run(outcome=Outcome.ERROR, error="e" * 100_000, trigger_ref="r" * 10_000))
    (run,) = await store.runs.list()
    assert run.error is not None and run.error.startswith("e" * MAX_ERROR)
    assert run.error.endswith(f"[cut {100_000 - MAX_ERROR} characters]")
    assert run.trigger_ref is not None and len(run.trigger_ref) < MAX_REF + 40


# SQLite only: it reads the statements from SQLite's trace (PostgreSQL's
# batches are checked by transaction id in test_postgres.py).
@pytest.mark.sqlite_only
async def test_writes_are_batched_into_one_transaction(store: Store) -> None:
    seen: list[str] = []
    await sqlite_connection(store).set_trace_callback(seen.append)
    for _ in range(500):
        store.runs.record(_run())
    await store.flush()
    await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]
    assert seen.count("BEGIN IMMEDIATE") == 1
    assert seen.count("COMMIT") == 1
    assert len(await store.runs.list(limit=1000)) == 500


async def test_rows_survive_a_locked_file_and_land_later(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", busy_timeout=timedelta(milliseconds=50))
    await store.open()
    blocker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        store.runs.record(_run())
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.flush()
        blocker.execute("COMMIT")
        await store.flush()
        assert len(await store.runs.list()) == 1
    finally:
        blocker.close()
        await store.close()


async def test_a_healthy_writer_keeps_all_a_failing_one_is_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", busy_timeout=timedelta(milliseconds=50))
    await store.open()
    writer = BatchWriter(store.db, max_pending=3)
    blocker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        for i in range(5):
            writer.add(_RESULT, ("i-1", "c", float(i), "pass", "healthy"))
        assert writer.dropped == 0  # nothing is wrong: nothing is dropped
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await writer.flush()
        assert writer.dropped == 2  # failing: only max_pending kept, oldest gone
        writer.add(_RESULT, ("i-1", "c", 5.0, "pass", "healthy"))
        assert writer.dropped == 3
        blocker.execute("COMMIT")
        await writer.flush()
        rows = await store.db.fetch("SELECT time FROM health_results ORDER BY time")
        assert [r[0] for r in rows] == [3.0, 4.0, 5.0]
    finally:
        blocker.close()
        await store.close()


async def test_using_a_closed_store_says_what_to_do(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(NotOpenError, match="open the store first"):
        store.runs.record(_run())


async def test_several_processes_open_a_new_file_at_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from ctrlplane.store import Store
        from tests.test_store import _run

        async def main():
            async with Store({str(tmp_path / "shared.db")!r}) as s:
                for _ in range(50):
                    s.runs.record(_run(worker=sys.argv[1]))
        asyncio.run(main())
        """
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, f"p{i}", stderr=subprocess.PIPE, cwd=ROOT
        )
        for i in range(4)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    async with Store(tmp_path / "shared.db") as s:
        runs = await s.runs.list(limit=1000)
    assert sorted({r.worker for r in runs}) == ["p0", "p1", "p2", "p3"]
    assert len(runs) == 200


# SQLite only: it reads the statements from SQLite's trace.
@pytest.mark.sqlite_only
async def test_many_rows_go_in_few_multi_row_statements(store: Store) -> None:
    seen: list[str] = []
    await sqlite_connection(store).set_trace_callback(seen.append)
    for _ in range(1234):
        store.runs.record(_run())
    await store.flush()
    await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]
    inserts = [s for s in seen if s.startswith("INSERT")]
    assert len(inserts) == 3  # 500 + 500 + 234 rows
    assert len(await store.runs.list(limit=2000)) == 1234


_RESULT = (
    "INSERT INTO health_results (instance_id, check_name, time, outcome, status) "
    "VALUES (?, ?, ?, ?, ?)"
)


async def test_a_cancelled_flush_writes_each_row_exactly_once(store: Store) -> None:
    for i in range(300):
        store.writer.add(_RESULT, ("i-1", "c", float(i), "pass", "healthy"))
    flushing = asyncio.create_task(store.flush())
    await asyncio.sleep(0)  # the transaction has begun
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    await store.flush()
    row = await store.db.fetchone("SELECT COUNT(*), COUNT(DISTINCT time) FROM health_results")
    assert tuple(row or ()) == (300, 300)


async def test_run_ids_sort_by_time() -> None:
    ids = [new_run_id(1_800_000_000.0 + i / 1000) for i in range(100)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 100
    assert len({new_run_id(1.0) for _ in range(100)}) == 100


@pytest.mark.parametrize("statement", ["BEGIN IMMEDIATE", "COMMIT"])
async def test_a_stop_during_the_migration_is_a_cancel_and_leaves_no_transaction(
    tmp_path: Path, statement: str
) -> None:
    # A SIGTERM while `ctrlplane run` opened its store cancelled the migration
    # as its COMMIT ran in aiosqlite's thread; the rollback after it failed
    # ("no transaction is active") and the process exited 1 with a traceback.
    loop = asyncio.get_running_loop()
    reached = asyncio.Event()
    gate = threading.Event()
    db = await aiosqlite.connect(tmp_path / "cancel.db")
    try:

        def trace(sql: str) -> None:
            if sql == statement:
                loop.call_soon_threadsafe(reached.set)
                gate.wait(10)  # hold the statement until the cancel has landed

        await db.set_trace_callback(trace)
        migrating = asyncio.create_task(migrate(db))
        async with asyncio.timeout(10):
            await reached.wait()
        migrating.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await migrating
        assert not db.in_transaction
        async with db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone() or (None,)
        # Cancelled in BEGIN: nothing applied. Cancelled in COMMIT: it committed.
        assert version == (0 if statement == "BEGIN IMMEDIATE" else LATEST)
    finally:
        await db.close()


_TRIGGER_SCRIPT = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a;b');
-- a comment; with a semicolon in it
CREATE TABLE note_log (msg TEXT NOT NULL);
CREATE TRIGGER note_added AFTER INSERT ON notes BEGIN
    INSERT INTO note_log (msg) VALUES ('added; ' || NEW.id);
    UPDATE notes SET body = body || ';x' WHERE id = NEW.id;
END;
INSERT INTO notes (id) VALUES (1)
"""


def test_a_migration_splits_only_between_whole_statements() -> None:
    statements = split_statements(_TRIGGER_SCRIPT)
    assert len(statements) == 4
    assert statements[2].startswith("CREATE TRIGGER") and statements[2].endswith("END")
    db = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            db.execute(statement)
        assert db.execute("SELECT body FROM notes").fetchall() == [("a;b;x",)]
        assert db.execute("SELECT msg FROM note_log").fetchall() == [("added; 1",)]
    finally:
        db.close()


def test_an_unfinished_statement_is_left_for_sqlite_to_refuse() -> None:
    assert split_statements("SELECT 1;; ;\nSELECT 'open;") == ["SELECT 1", "SELECT 'open;"]


async def test_the_store_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    async with Store(tmp_path / "db.sqlite") as first:
        identity = first.identity
    async with Store(tmp_path / "db.sqlite") as again:
        assert again.identity == identity
    async with Store(tmp_path / "other.sqlite") as other:
        assert other.identity != identity
    assert identity.startswith("s-")


async def test_placing_an_instance_is_conditional_on_its_node(store: Store) -> None:
    instance = make_instance("web")
    await store.instances.create(instance)
    assert (await store.instances.get("web")).node is None
    assert await store.instances.place(instance.id, "a", expect=None)
    # Two nodes moving it off "a" at once: only the first wins.
    assert await store.instances.place(instance.id, "b", expect="a")
    assert not await store.instances.place(instance.id, "c", expect="a")
    assert (await store.instances.get("web")).node == "b"
    assert [i.name for i in await store.instances.on_node("b")] == ["web"]
    assert await store.instances.on_node("a") == []
    assert await store.instances.count_by_node() == {"b": 1}


async def test_a_run_recorded_again_is_overwritten(store: Store) -> None:
    started = _run(outcome=Outcome.RETRY, finished=None)
    store.runs.record(started)
    await store.flush()
    done = _run(id=started.id, started=started.started, outcome=Outcome.OK)
    # Twice in one batch too: the last record wins.
    store.runs.record(_run(id=started.id, started=started.started, outcome=Outcome.ERROR))
    store.runs.record(done)
    assert await store.runs.list() == [done]


async def test_on_commit_tells_once_another_store_can_read_the_row(
    store: Store, store_location: Path | str
) -> None:
    async with Store(store_location) as other:
        seen: list[list[WorkerRun]] = []
        told = asyncio.Event()

        async def read_then() -> None:
            seen.append(await other.runs.list())
            told.set()

        tasks: list[asyncio.Task[None]] = []
        run = _run()
        store.runs.record(
            msgspec.structs.replace(run, finished=None),
            lambda ok: tasks.append(asyncio.ensure_future(read_then())),
        )
        store.runs.flush_soon()
        async with asyncio.timeout(10):
            await told.wait()
        assert [r.id for r in seen[0]] == [run.id]


async def test_a_failing_writer_drops_the_oldest_and_tells_their_callbacks(store: Store) -> None:
    # No such table, on either backend: every flush fails, and rows past
    # max_pending are dropped, oldest first, their callbacks told so.
    writer = BatchWriter(store.db, max_pending=2)
    outcomes: list[tuple[str, bool]] = []
    for name in ("a", "b", "c"):

        def told(ok: bool, name: str = name) -> None:
            outcomes.append((name, ok))

        writer.add("INSERT INTO no_such_table (body) VALUES (?)", (name,), told)
        with pytest.raises(Exception, match="no_such_table"):
            await writer.flush()
    assert outcomes == [("a", False)]
    assert writer.dropped == 1
    # Many rows at once are bounded the same way, oldest first.
    writer.add_many("INSERT INTO no_such_table (body) VALUES (?)", [("d",), ("e",)])
    assert outcomes == [("a", False), ("b", False), ("c", False)]
    assert writer.dropped == 3


async def test_checks_removed_to_none_are_gone(store: Store) -> None:
    from ctrlplane.store.health import CheckSpec

    instance = make_instance("web")
    await store.instances.create(instance)
    await store.health.set_checks(instance.id, [CheckSpec(name="a"), CheckSpec(name="b")])
    await store.health.set_checks(instance.id, [CheckSpec(name="b")])
    assert [s.name for s in await store.health.states(instance.id)] == ["b"]
    await store.health.set_checks(instance.id, [])
    assert await store.health.states(instance.id) == []


async def test_the_states_of_some_instances_only(store: Store) -> None:
    # A node's sweep reads its shard's states, however many ids that is.
    ids = [f"i-{n:04d}" for n in range(1200)]
    for instance_id in ids[:3]:
        await store.instances.put(make_instance(instance_id, id=instance_id))
        await store.health.set_checks(
            instance_id,
            [CheckSpec(name="a", target="http://x/"), CheckSpec(name="b", target="http://x/")],
        )
    states = await store.health.states(with_last=False, instance_ids=[*ids[1:], "nope"])
    assert [(s.instance_id, s.name) for s in states] == [
        (i, n) for i in ids[1:3] for n in ("a", "b")
    ]
    assert await store.health.states(instance_ids=[]) == []
