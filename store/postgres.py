"""The PostgreSQL backend: a pool of asyncpg connections, migrations under an advisory lock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from ctrlplane.store.errors import MigrationError, StoreUnavailableError
from ctrlplane.store.postgres_migrations import LATEST, MIGRATIONS
from ctrlplane.store.sql import copy_target, multi_row, numbered
from ctrlplane.store.types import Dialect, Executor, Params, Row
from ctrlplane.store.urls import redact_store_url

# PostgreSQL's limit on bound parameters per statement is 32767.
_MAX_PARAMS = 32000

_COPY_FROM = 8
"""Rows from which a plain INSERT goes by COPY. A few rows go as a statement:
COPY has round trips of its own to set up (a threshold with room, not a
measured edge)."""

# Advisory lock keys (per database: another database on the same server does
# not share them). Arbitrary, fixed, and ours: "ctrl" in ASCII, then a number.
MIGRATION_LOCK = 0x6374726C_00000001
"""Held while migrating, so two processes opening a new database apply each migration once."""
WRITE_LOCK = 0x6374726C_00000002
"""Held by each exclusive transaction: one at a time across every process, as on SQLite."""


class PostgresDatabase:
    """A PostgreSQL database through a pool of asyncpg connections.

    Reads and batches run on whichever pooled connection is free, so several
    go on at once; exclusive transactions take :data:`WRITE_LOCK` first,
    which gives the read-check-write transactions of the table modules the
    one-at-a-time turn SQLite's write lock gives them, across every replica
    that shares the database.
    """

    dialect = Dialect.POSTGRESQL

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        """The asyncpg pool."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> PostgresDatabase:
        """Connect to ``url`` and bring the database's schema up to date.

        Args:
            url: ``postgresql://user@host:port/database`` (libpq's URL form;
                without a password in it or in ``password``, asyncpg reads
                ``PGPASSWORD`` and the password file ``PGPASSFILE`` or
                ``~/.pgpass``, as libpq does).
            password: The password, when it is kept out of the URL.
            pool_size: Connections at most.
            connect_timeout: How long connecting may take.

        Raises:
            StoreUnavailableError: the server cannot be reached or refuses
                the login (the URL in the message has no password).
            MigrationError: a migration failed, or the database is from newer code.
        """
        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailableError(redact_store_url(url), _reason(exc, url)) from None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in await self.pool.fetch(numbered(sql), *params)]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = await self.pool.fetchrow(numbered(sql), *params)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _rowcount(await self.pool.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction(exclusive=False) as tx:
            await tx.executemany(sql, rows)

    @contextlib.asynccontextmanager
    async def transaction(self, *, exclusive: bool = True) -> AsyncIterator[Executor]:
        # asyncpg rolls back when the block raises (or is cancelled), and a
        # connection released mid-statement is reset before it is reused.
        async with self.pool.acquire() as conn, conn.transaction():
            if exclusive:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield _Transaction(conn)

    async def close(self) -> None:
        await self.pool.close()


class _Transaction:
    """The statements of one transaction on one pooled connection."""

    def __init__(self, conn: Any) -> None:
        # asyncpg's pool hands out a proxy of its Connection: typed as Any.
        self._conn = conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(numbered(sql), *params)]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = await self._conn.fetchrow(numbered(sql), *params)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _rowcount(await self._conn.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        target = copy_target(sql) if len(rows) >= _COPY_FROM else None
        if target is not None:
            # COPY: the rows in asyncpg's binary format, no statement per row
            # to bind or plan. A result, a metric, a snapshot is such a row.
            table, columns = target
            await self._conn.copy_records_to_table(table, records=rows, columns=columns)
            return
        for statement, params, many in multi_row(
            sql, rows, max_params=_MAX_PARAMS, upsert_rows=False
        ):
            if many:
                await self._conn.executemany(numbered(statement), params)
            else:
                await self._conn.execute(numbered(statement), *params)


def _rowcount(status: str) -> int:
    """The row count of a command status ("UPDATE 3", "INSERT 0 1"); 0 if it has none."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


def _reason(exc: BaseException, url: str) -> str:
    text = str(exc) or type(exc).__name__
    # asyncpg does not echo the URL, but a reason must never carry its secret.
    return text.replace(url, redact_store_url(url))


async def migrate(conn: Any) -> None:
    """Apply the migrations the database has not had yet; refuse one from newer code.

    The version is in ``ctrlplane_schema``; the whole run holds
    :data:`MIGRATION_LOCK`, so of two processes opening a new database at
    once the second waits, then finds everything applied.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ctrlplane_schema ("
            "version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
        )
        current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM ctrlplane_schema"))
        if current > LATEST:
            raise MigrationError(
                current, f"the database is at schema {current}, newer than this code's {LATEST}"
            )
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            try:
                # No arguments: asyncpg sends the script as one simple query.
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(version, str(exc)) from exc
            await conn.execute(
                "INSERT INTO ctrlplane_schema (version, applied) "
                "VALUES ($1, EXTRACT(EPOCH FROM clock_timestamp()))",
                version,
            )
