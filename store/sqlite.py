"""The SQLite backend: one file, WAL mode, one connection, migrations in ``PRAGMA user_version``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import aiosqlite
import structlog

from ctrlplane.store.errors import MigrationError
from ctrlplane.store.migrations import LATEST, MIGRATIONS
from ctrlplane.store.sql import multi_row
from ctrlplane.store.types import Dialect, Executor, Params, Row

log = structlog.get_logger("ctrlplane.store")

# SQLite's limit on bound parameters per statement (32766 since 3.32), with room.
_MAX_PARAMS = 32000 if sqlite3.sqlite_version_info >= (3, 32) else 999


class SqliteDatabase:
    """One SQLite file through one aiosqlite connection.

    Several processes on one host may open the same file: WAL mode lets
    readers run beside the one writer, and the busy timeout makes a writer
    wait for another process's transaction instead of failing.

    Transactions take turns on the one connection (so a direct write never
    ends up inside, or rolls back with, a batch), and each is ``BEGIN
    IMMEDIATE``: it holds the file's write lock from its start, whatever
    ``exclusive`` says.

    No path leaves the connection inside a transaction: a statement whose
    caller is cancelled still runs to its end in aiosqlite's thread, so it is
    awaited (bounded by the busy timeout) and rolled back before the
    cancellation goes on; a failed COMMIT is rolled back too.
    """

    dialect = Dialect.SQLITE

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection
        """The aiosqlite connection (autocommit; transactions are explicit)."""
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: timedelta) -> SqliteDatabase:
        """Open (or create) the file at ``path`` and bring its schema up to date."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout.total_seconds() * 1000)}")
            await _set_wal(db, busy_timeout)
            # NORMAL is durable across application crashes in WAL mode; only a
            # power loss can lose the last transactions, which suits run history.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self.connection.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self.connection.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    @contextlib.asynccontextmanager
    async def transaction(self, *, exclusive: bool = True) -> AsyncIterator[Executor]:
        async with self._lock:
            await self._begin()
            try:
                yield _Transaction(self.connection)
                await execute_to_end(self.connection, "COMMIT")
            except BaseException:
                await roll_back(self.connection)
                raise

    async def _begin(self) -> None:
        if self.connection.in_transaction:
            # Left open by a fault we did not see: never write inside it.
            await roll_back(self.connection)
        try:
            await execute_to_end(self.connection, "BEGIN IMMEDIATE")
        except asyncio.CancelledError:
            await roll_back(self.connection)  # it began after all, once the lock was free
            raise

    async def close(self) -> None:
        await self.connection.close()


class _Transaction:
    """The statements of one transaction on the connection."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._db.execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        # Multi-row VALUES: far less per-row work in SQLite and in the sqlite3
        # module, whose per-row binding holds the GIL the event loop needs.
        for statement, params, many in multi_row(
            sql, rows, max_params=_MAX_PARAMS, upsert_rows=True
        ):
            if many:
                await self._db.executemany(statement, params)
            else:
                await self._db.execute(statement, params)


async def _set_wal(db: aiosqlite.Connection, patience: timedelta) -> None:
    """Switch the file to WAL mode.

    Changing the journal mode needs the file to itself, and SQLite answers
    "database is locked" at once instead of calling the busy handler when
    another process is opening the same new file: so wait and try again here.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience.total_seconds()
    delay = 0.01
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)


async def migrate(db: aiosqlite.Connection) -> None:
    """Apply the migrations the file has not had yet; refuse a file from newer code."""
    # BEGIN IMMEDIATE takes the write lock before reading the version, so two
    # processes opening a new file at once cannot both apply migration 1.
    # BEGIN and COMMIT run to their end even when a stop cancels the start
    # meanwhile: the rollback then sees whether a transaction is really open.
    try:
        await execute_to_end(db, "BEGIN IMMEDIATE")
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > LATEST:
            raise MigrationError(
                current, f"the file is at schema {current}, newer than this code's {LATEST}"
            )
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            for statement in split_statements(sql):
                try:
                    await db.execute(statement)
                except Exception as exc:
                    raise MigrationError(version, str(exc)) from exc
            await db.execute(f"PRAGMA user_version = {version}")
        await execute_to_end(db, "COMMIT")
    except BaseException:
        await roll_back(db)
        raise


def split_statements(sql: str) -> list[str]:
    """The statements of the script ``sql``, each whole, without empty ones.

    A ``;`` ends a statement only where :func:`sqlite3.complete_statement` says
    one is complete, so one inside a string literal, a comment or a trigger's
    ``BEGIN ... END`` body does not cut it. What is left after the last
    complete statement (an unfinished one) is returned as is, for SQLite to
    refuse with its own message.
    """
    out: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece
        if sqlite3.complete_statement(current + ";"):
            out.append(current.strip())
            current = ""
        else:
            current += ";"
    rest = current.removesuffix(";").strip()
    if rest:
        out.append(rest)
    return [statement for statement in out if statement]


async def execute_to_end(db: aiosqlite.Connection, sql: str) -> None:
    """Execute ``sql`` on ``db`` and wait for it to end, even if cancelled meanwhile.

    Cancelling the await does not stop aiosqlite's thread: a BEGIN that
    waits on another writer's lock would run later and leave the
    connection inside a transaction, and a COMMIT would still commit. So the
    statement is always awaited to its end (the busy timeout bounds it); a
    cancellation that came meanwhile is raised afterwards, once the caller
    can see the connection's real state and roll back.
    """
    statement = asyncio.ensure_future(db.execute(sql))
    cancelled = False
    while not statement.done():
        try:
            await asyncio.wait([statement])
        except asyncio.CancelledError:
            cancelled = True
    statement.result()
    if cancelled:
        raise asyncio.CancelledError


async def roll_back(db: aiosqlite.Connection) -> None:
    """Roll back whatever transaction ``db`` has open; never raises but cancellation."""
    if not db.in_transaction:
        return
    try:
        await execute_to_end(db, "ROLLBACK")
    except sqlite3.Error as exc:
        log.error("rollback failed", error=str(exc))
