"""BatchWriter: callbacks after commit, and transactions that cancellation and
failed commits cannot leave open.

SQLite only: these hold SQLite's file lock from another process or thread,
and look at the one connection's transaction state. The same guarantees on
PostgreSQL (callbacks after COMMIT, rows kept over a failed flush, dropped rows
told) are tested on both backends in test_store.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiosqlite
import pytest
import pytest_asyncio

from ctrlplane.store.db import Store
from ctrlplane.store.sqlite import SqliteDatabase
from ctrlplane.store.writer import BatchWriter
from tests.helpers import sqlite_connection

_INSERT = "INSERT INTO notes (body) VALUES (?)"


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store with a short busy timeout and a table of its own to write."""
    s = Store(
        tmp_path / "ctrlplane.db",
        flush_interval=timedelta(milliseconds=20),
        busy_timeout=timedelta(milliseconds=300),
    )
    await s.open()
    await sqlite_connection(s).execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
    )
    try:
        yield s
    finally:
        await s.close()


async def _notes(store: Store) -> list[str]:
    return [row[0] for row in await store.db.fetch("SELECT body FROM notes ORDER BY id")]


def _path(store: Store) -> Path:
    assert store.path is not None
    return store.path


async def _begin_traced(store: Store) -> asyncio.Event:
    """An event set when the connection starts executing a BEGIN."""
    loop = asyncio.get_running_loop()
    began = asyncio.Event()

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN"):
            loop.call_soon_threadsafe(began.set)

    await sqlite_connection(store).set_trace_callback(trace)
    return began


async def test_on_commit_is_called_after_the_row_is_on_disk(store: Store) -> None:
    seen: list[tuple[bool, list[str]]] = []
    done = asyncio.Event()

    def committed(ok: bool) -> None:
        # Read with a connection of its own: what another process would see.
        with sqlite3.connect(_path(store)) as other:
            rows = [r[0] for r in other.execute("SELECT body FROM notes")]
        seen.append((ok, rows))
        done.set()

    store.writer.add(_INSERT, ("a",), committed)
    async with asyncio.timeout(10):
        await done.wait()
    assert seen == [(True, ["a"])]


async def test_a_cancel_during_begin_leaves_the_connection_usable(store: Store) -> None:
    began = await _begin_traced(store)
    holder = sqlite3.connect(_path(store), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock

    async def write() -> None:
        async with store.writer.transaction() as db:
            await db.execute(_INSERT, ("never",))

    task = asyncio.create_task(write())
    async with asyncio.timeout(10):
        await began.wait()
    task.cancel()
    # The BEGIN is still waiting on the lock in aiosqlite's thread; let it go.
    holder.execute("ROLLBACK")
    holder.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sqlite_connection(store).in_transaction
    store.writer.add(_INSERT, ("after",))
    await store.writer.flush()
    assert await _notes(store) == ["after"]


async def test_a_failed_commit_is_rolled_back(store: Store) -> None:
    db = sqlite_connection(store)
    await db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    await db.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )

    async def orphan() -> None:
        async with store.writer.transaction() as tx:
            await tx.execute("INSERT INTO notes (body) VALUES ('lost')")
            await tx.execute("INSERT INTO child (parent) VALUES (42)")  # fails at COMMIT

    with pytest.raises(sqlite3.IntegrityError):
        await orphan()
    assert not db.in_transaction
    async with store.writer.transaction() as tx:
        await tx.execute("INSERT INTO notes (body) VALUES ('kept')")
    assert await _notes(store) == ["kept"]


async def test_a_batch_waits_out_another_process_holding_the_lock(store: Store) -> None:
    # A second process takes the write lock and holds it until told to stop.
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "db.execute('ROLLBACK')\n",
        str(_path(store)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        async with asyncio.timeout(30):
            line = await holder.stdout.readline()
        assert line.strip() == b"locked"
        outcomes: list[bool] = []
        store.writer.add(_INSERT, ("waited",), outcomes.append)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.writer.flush()
        assert outcomes == []  # kept for the next round, not called
        assert not sqlite_connection(store).in_transaction
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        async with asyncio.timeout(30):
            assert await holder.wait() == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    await store.writer.flush()
    assert outcomes == [True]
    assert await _notes(store) == ["waited"]


async def test_dropped_rows_tell_their_callbacks(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        writer = BatchWriter(SqliteDatabase(db), max_pending=2)
        outcomes: list[tuple[str, bool]] = []
        # No such table: every flush fails, so old rows are dropped past max_pending.
        for name in ("a", "b", "c"):

            def told(ok: bool, name: str = name) -> None:
                outcomes.append((name, ok))

            writer.add(_INSERT, (name,), told)
            with pytest.raises(sqlite3.OperationalError):
                await writer.flush()
        assert outcomes == [("a", False)]
        assert writer.dropped == 1
    finally:
        await db.close()


async def test_close_in_the_iteration_that_wakes_the_writer_stops_it(tmp_path: Path) -> None:
    # asyncio.wait_for (3.11) swallowed a cancel that landed as the awaited
    # event was set: close() then waited forever on a writer that ran on.
    db = await aiosqlite.connect(tmp_path / "race.db")
    try:
        await db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        writer = BatchWriter(SqliteDatabase(db), interval=timedelta(seconds=30))
        writer.start()
        for _ in range(3):
            await asyncio.sleep(0)  # the writer is now waiting to be woken
        committed: list[bool] = []
        writer.add(_INSERT, ("last",), committed.append)
        writer.flush_soon()
        closing = asyncio.ensure_future(writer.close())
        async with asyncio.timeout(10):
            await asyncio.shield(closing)
        assert committed == [True]
        async with db.execute("SELECT body FROM notes") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["last"]
    finally:
        await db.close()
