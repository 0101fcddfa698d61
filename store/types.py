"""The database seam: what the table modules and the batched writer need of a backend.

Two implementations: :class:`ctrlplane.store.sqlite.SqliteDatabase` (one
file, aiosqlite) and :class:`ctrlplane.store.postgres.PostgresDatabase` (a
pool of asyncpg connections). SQL is written once, with ``?`` placeholders,
in the dialect both share; each backend adapts it (:mod:`ctrlplane.store.sql`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any, Protocol

Row = Sequence[Any]
"""One row read, by column position (an aiosqlite row or an asyncpg record)."""
Params = Sequence[Any]
"""The values bound to a statement's ``?`` placeholders, in order."""


class Dialect(StrEnum):
    """Which backend a database is, for the rare statement that must differ."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class Executor(Protocol):
    """Runs statements: inside a transaction, or each on its own."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row ``sql`` selects."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """The first row ``sql`` selects, or ``None``."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run ``sql``; the number of rows it inserted, updated or deleted."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run ``sql`` once per row of ``rows``, as few statements as the backend allows
        (an INSERT of many rows becomes multi-row ``VALUES``)."""
        ...


class Database(Executor, Protocol):
    """An open database: statements on their own, or in a transaction.

    ``fetch``/``fetchone`` outside a transaction read what is committed
    (on SQLite, which has one connection, also what a transaction in
    progress wrote). ``execute`` and ``executemany`` outside a transaction
    are a transaction each.
    """

    @property
    def dialect(self) -> Dialect:
        """Which backend this is."""
        ...

    def transaction(self, *, exclusive: bool = True) -> AbstractAsyncContextManager[Executor]:
        """A transaction: committed when the block ends, rolled back if it raises.

        ``exclusive`` transactions of one store run one at a time across every
        process that shares it (SQLite's write lock; a PostgreSQL advisory
        lock), so a read-check-write inside one (claim a deployment, sync
        domains) cannot interleave with another's. The batched writer's
        inserts need no such turn and pass ``exclusive=False``.
        """
        ...

    async def close(self) -> None:
        """Close the connection(s). Idempotent."""
        ...
