"""The store: one interface, two backends (SQLite and PostgreSQL), batched writes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import TracebackType

from ctrlplane.store.audit import AuditStore
from ctrlplane.store.certs import CertificateStore, DomainStore
from ctrlplane.store.deployments import DeploymentStore
from ctrlplane.store.errors import MigrationError, NotOpenError, StoreUnavailableError
from ctrlplane.store.health import HealthStore
from ctrlplane.store.instances import InstanceStore
from ctrlplane.store.migrations import LATEST
from ctrlplane.store.runs import RunStore
from ctrlplane.store.telemetry import TelemetryStore
from ctrlplane.store.types import Database
from ctrlplane.store.urls import is_postgres_url, redact_store_url, sqlite_file
from ctrlplane.store.writer import BatchWriter

DB_FILE = "ctrlplane.db"
"""The SQLite file's name in the data dir, when no store URL is given."""


class Store:
    """The control plane's store: SQLite (one host) or PostgreSQL (a cluster).

    ``location`` is a path, the SQLite file (the default store, in the data
    dir), or a ``postgresql://`` (or ``postgres://``) URL, a database that
    every replica of a cluster shares. Both give the same tables, the same
    migrations (versioned on each) and the same batched writes.

    Several processes may open one store: on SQLite, WAL mode lets readers run
    beside the one writer and the busy timeout makes a writer wait for
    another process's transaction; on PostgreSQL each process has its own
    pool of connections.

    Args:
        location: The SQLite file (its folder is created if missing), or a
            PostgreSQL URL.
        password: The PostgreSQL password, when it is kept out of the URL.
        password_file: A file whose first line is that password, read at
            :meth:`open` (so that it is in neither argv nor the environment).
        busy_timeout: How long a SQLite write waits for another writer.
        flush_interval: How often batched writes are flushed.
        pool_size: PostgreSQL connections at most.
    """

    def __init__(
        self,
        location: Path | str,
        *,
        password: str | None = None,
        password_file: Path | None = None,
        busy_timeout: timedelta = timedelta(seconds=10),
        flush_interval: timedelta = timedelta(milliseconds=200),
        pool_size: int = 10,
    ) -> None:
        self._url = (
            str(location) if isinstance(location, str) and is_postgres_url(location) else None
        )
        self.path = None if self._url is not None else Path(location)
        """The SQLite file; ``None`` for PostgreSQL."""
        self._password = password
        self._password_file = password_file
        self._busy_timeout = busy_timeout
        self._flush_interval = flush_interval
        self._pool_size = pool_size
        self._db: Database | None = None
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

    @classmethod
    def from_url(
        cls,
        url: str | None,
        *,
        data_dir: Path,
        password: str | None = None,
        password_file: Path | None = None,
        flush_interval: timedelta = timedelta(milliseconds=200),
    ) -> Store:
        """The store ``url`` names: ``None`` is the SQLite file :data:`DB_FILE` in
        ``data_dir``; ``sqlite:///PATH`` is that SQLite file (which the
        processes of one host may share); a ``postgresql://`` URL is that
        database."""
        location: Path | str = data_dir / DB_FILE if url is None else url
        sqlite = sqlite_file(url) if url is not None else None
        return cls(
            sqlite if sqlite is not None else location,
            password=password,
            password_file=password_file,
            flush_interval=flush_interval,
        )

    @property
    def location(self) -> str:
        """Where the store is, fit for a log: the file, or the URL without its password."""
        return str(self.path) if self._url is None else redact_store_url(self._url)

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    @property
    def identity(self) -> str:
        """This store's identity: made once when the store is created, the
        same for every process that opens it, so that nodes can tell whether
        they share one store."""
        if self._identity is None:
            raise NotOpenError("read the store's identity")
        return self._identity

    @property
    def db(self) -> Database:
        """The database: statements on their own or in transactions."""
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
        """Connect, apply migrations and start the batched writer."""
        if self._db is not None:
            return self
        db: Database
        if self._url is not None:
            # Imported here: a SQLite store never pays for asyncpg.
            from ctrlplane.store.postgres import PostgresDatabase

            db = await PostgresDatabase.open(
                self._url, password=self._read_password(), pool_size=self._pool_size
            )
        else:
            from ctrlplane.store.sqlite import SqliteDatabase

            assert self.path is not None
            db = await SqliteDatabase.open(self.path, busy_timeout=self._busy_timeout)
        try:
            row = await db.fetchone("SELECT value FROM meta WHERE key = 'store_id'")
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

    def _read_password(self) -> str | None:
        if self._password_file is None:
            return self._password
        assert self._url is not None
        try:
            with self._password_file.open("rb") as f:
                # Bounded: a password file, not whatever the path was mistaken for.
                first = f.read(4096).decode().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = f"cannot read the password file {self._password_file}: {exc}"
            raise StoreUnavailableError(redact_store_url(self._url), reason) from None
        if not first or not first[0]:
            reason = f"the password file {self._password_file} is empty"
            raise StoreUnavailableError(redact_store_url(self._url), reason)
        return first[0]

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
