"""The SQLite store: one file, WAL mode, versioned migrations, batched writes."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import aiosqlite

from ctrlplane.store.audit import AuditStore
from ctrlplane.store.certs import CertificateStore, DomainStore
from ctrlplane.store.deployments import DeploymentStore
from ctrlplane.store.errors import MigrationError, NotOpenError
from ctrlplane.store.health import HealthStore
from ctrlplane.store.instances import InstanceStore
from ctrlplane.store.migrations import LATEST, MIGRATIONS
from ctrlplane.store.runs import RunStore
from ctrlplane.store.telemetry import TelemetryStore
from ctrlplane.store.writer import BatchWriter, execute_to_end, roll_back


class Store:
    """The control plane's SQLite store.

    Several processes on one host may open the same file: WAL mode lets
    readers run beside the one writer, and the busy timeout makes a writer
    wait for another process's transaction instead of failing.

    Args:
        path: The database file; its folder is created if missing.
        busy_timeout: How long a write waits for another writer.
        flush_interval: How often batched writes are flushed.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout: timedelta = timedelta(seconds=10),
        flush_interval: timedelta = timedelta(milliseconds=200),
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._flush_interval = flush_interval
        self._db: aiosqlite.Connection | None = None
        self._writer: BatchWriter | None = None
        self._runs: RunStore | None = None
        self._instances: InstanceStore | None = None
        self._health: HealthStore | None = None
        self._audit: AuditStore | None = None
        self._domains: DomainStore | None = None
        self._certificates: CertificateStore | None = None
        self._telemetry: TelemetryStore | None = None
        self._deployments: DeploymentStore | None = None
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """This store's identity: made once when the store is created, the
        same for every process that opens it, so that nodes can tell whether
        they share one store."""
        if self._identity is None:
            raise NotOpenError("read the store's identity")
        return self._identity

    @property
    def db(self) -> aiosqlite.Connection:
        """The aiosqlite connection (autocommit; transactions are explicit)."""
        if self._db is None:
            raise NotOpenError("use the database")
        return self._db

    @property
    def writer(self) -> BatchWriter:
        """The batched writer shared by every table of this store."""
        if self._writer is None:
            raise NotOpenError("write")
        return self._writer

    @property
    def runs(self) -> RunStore:
        """Worker runs."""
        if self._runs is None:
            raise NotOpenError("record runs")
        return self._runs

    @property
    def instances(self) -> InstanceStore:
        """Instances."""
        if self._instances is None:
            raise NotOpenError("use instances")
        return self._instances

    @property
    def health(self) -> HealthStore:
        """Health checks and their results."""
        if self._health is None:
            raise NotOpenError("use health checks")
        return self._health

    @property
    def audit(self) -> AuditStore:
        """Audit entries."""
        if self._audit is None:
            raise NotOpenError("use the audit log")
        return self._audit

    @property
    def telemetry(self) -> TelemetryStore:
        """Metrics and resource snapshots."""
        if self._telemetry is None:
            raise NotOpenError("use telemetry")
        return self._telemetry

    @property
    def deployments(self) -> DeploymentStore:
        """Deployments."""
        if self._deployments is None:
            raise NotOpenError("record deployments")
        return self._deployments

    @property
    def domains(self) -> DomainStore:
        """Domains and their renewal back-off."""
        if self._domains is None:
            raise NotOpenError("use domains")
        return self._domains

    @property
    def certificates(self) -> CertificateStore:
        """Issued certificates."""
        if self._certificates is None:
            raise NotOpenError("use certificates")
        return self._certificates

    async def open(self) -> Store:
        """Open the file, apply migrations and start the batched writer."""
        if self._db is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(
                f"PRAGMA busy_timeout = {int(self._busy_timeout.total_seconds() * 1000)}"
            )
            await _set_wal(db, self._busy_timeout)
            # NORMAL is durable across application crashes in WAL mode; only a
            # power loss can lose the last transactions, which suits run history.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await _migrate(db)
            async with db.execute("SELECT value FROM meta WHERE key = 'store_id'") as cursor:
                row = await cursor.fetchone()
        except BaseException:
            await db.close()
            raise
        if row is None:
            await db.close()
            raise MigrationError(LATEST, "the meta table has no store_id")
        self._identity = str(row[0])
        self._db = db
        self._writer = BatchWriter(db, interval=self._flush_interval)
        self._writer.start()
        self._runs = RunStore(db, self._writer)
        self._instances = InstanceStore(db, self._writer)
        self._health = HealthStore(db, self._writer)
        self._audit = AuditStore(db, self._writer)
        self._domains = DomainStore(db, self._writer)
        self._certificates = CertificateStore(db, self._writer)
        self._telemetry = TelemetryStore(db, self._writer)
        self._deployments = DeploymentStore(db, self._writer)
        return self

    async def flush(self) -> None:
        """Write everything batched so far."""
        await self.writer.flush()

    async def close(self) -> None:
        """Flush and close. Idempotent."""
        db, writer = self._db, self._writer
        self._db = self._writer = None
        self._runs = self._instances = self._health = self._audit = None
        self._domains = self._certificates = None
        self._telemetry = None
        self._deployments = None
        if db is None:
            return
        try:
            if writer is not None:
                await writer.close()
        finally:
            await db.close()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


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


async def _migrate(db: aiosqlite.Connection) -> None:
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
