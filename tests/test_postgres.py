"""The PostgreSQL backend on a real server: replicas sharing one database, migrations
under a lock, batches, reconnection, and errors that never show the password."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from ctrlplane.store import MigrationError, Store
from ctrlplane.store.deployments import Deployment, DeploymentState
from ctrlplane.store.errors import StoreUnavailableError
from ctrlplane.store.health import CheckResult, HealthStatus, Outcome
from ctrlplane.store.migrations import LATEST as SQLITE_LATEST
from ctrlplane.store.postgres import WRITE_LOCK
from ctrlplane.store.postgres_migrations import LATEST
from tests.helpers import make_instance, wait_for
from tests.postgres import PASSWORD, PostgresServer, missing
from tests.test_store import _run


async def _raw(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=30)


async def test_two_replicas_share_writes_and_identity(postgres_url: str) -> None:
    async with Store(postgres_url) as a, Store(postgres_url) as b:
        assert a.identity == b.identity
        assert a.identity.startswith("s-") and len(a.identity) == 34
        await a.instances.create(make_instance("web"))
        assert [i.name for i in await b.instances.all()] == ["web"]
        # Two replicas creating the same name: one instance.
        assert not await b.instances.create(make_instance("web"))
        run = _run()
        b.runs.record(run)
        await b.flush()
        assert await a.runs.list() == [run]


async def test_two_databases_have_two_identities(postgres_server: PostgresServer) -> None:
    names = [await postgres_server.create_database() for _ in range(2)]
    try:
        identities = set()
        for name in names:
            async with Store(postgres_server.url(name)) as store:
                identities.add(store.identity)
            async with Store(postgres_server.url(name)) as again:
                assert again.identity in identities  # made once, kept
        assert len(identities) == 2
    finally:
        for name in names:
            await postgres_server.drop_database(name)


async def test_replicas_migrating_a_new_database_at_once_apply_it_once(postgres_url: str) -> None:
    stores = [Store(postgres_url) for _ in range(4)]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(s.open() for s in stores))
        assert len({s.identity for s in stores}) == 1
    finally:
        for s in stores:
            await s.close()
    conn = await _raw(postgres_url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM ctrlplane_schema")]
        assert versions == [LATEST]
        assert await conn.fetchval("SELECT COUNT(*) FROM meta") == 1
    finally:
        await conn.close()


async def test_a_database_from_newer_code_is_refused(postgres_url: str) -> None:
    async with Store(postgres_url):
        pass
    conn = await _raw(postgres_url)
    try:
        await conn.execute(
            "INSERT INTO ctrlplane_schema (version, applied) VALUES ($1, 0)", LATEST + 1
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="newer than this code"):
        await Store(postgres_url).open()


async def test_both_backends_have_the_same_schema(postgres_url: str, tmp_path: Path) -> None:
    assert LATEST == SQLITE_LATEST
    async with Store(tmp_path / "db.sqlite"), Store(postgres_url):
        pass
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        tables = [
            r[0]
            for r in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        sqlite_columns = {
            t: sorted(r[1] for r in raw.execute(f"PRAGMA table_info({t})")) for t in tables
        }
    finally:
        raw.close()
    conn = await _raw(postgres_url)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'ctrlplane_schema'"
        )
    finally:
        await conn.close()
    pg_columns: dict[str, list[str]] = {}
    for r in rows:
        pg_columns.setdefault(r[0], []).append(r[1])
    # SQLite's rowid is implicit; PostgreSQL's deployments carry it as a column.
    pg_columns["deployments"].remove("rowid")
    assert {t: sorted(c) for t, c in pg_columns.items()} == sqlite_columns


async def test_a_flush_is_one_transaction(postgres_url: str) -> None:
    async with Store(postgres_url, flush_interval=timedelta(seconds=30)) as store:
        for _ in range(1234):
            store.runs.record(_run())
        await store.flush()
        # Every row of one transaction carries its id in xmin.
        row = await store.db.fetchone(
            "SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM worker_runs"
        )
        assert tuple(row or ()) == (1234, 1)
        # Results go by COPY, also in one transaction, with their own ids.
        now = datetime.now(UTC)
        store.health.record(
            [
                CheckResult(
                    instance_id="i-1",
                    check="http",
                    time=now + timedelta(seconds=i),
                    outcome=Outcome.PASS,
                    status=HealthStatus.HEALTHY,
                    latency=timedelta(milliseconds=i) if i % 2 else None,
                    message="200 OK",
                )
                for i in range(300)
            ],
            [],
        )
        await store.flush()
        row = await store.db.fetchone(
            "SELECT COUNT(*), COUNT(DISTINCT xmin::text), COUNT(DISTINCT id) FROM health_results"
        )
        assert tuple(row or ()) == (300, 1, 300)
        newest = (await store.health.results("i-1", limit=1))[0]
        assert newest.latency == timedelta(milliseconds=299) and newest.message == "200 OK"


async def test_rows_survive_lost_connections_and_land_later(postgres_url: str) -> None:
    # As after a server restart: every connection of the pool is gone.
    async with Store(postgres_url, flush_interval=timedelta(seconds=30)) as store:
        await store.runs.list()  # the pool has a live connection
        conn = await _raw(postgres_url)
        try:
            killed = await conn.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert killed >= 1
        told: list[bool] = []
        run = _run()
        store.runs.record(msgspec.structs.replace(run, finished=None), told.append)
        # The first attempt may meet a dead connection; the rows are kept and
        # the next attempt, on a new connection, writes them.
        failures: list[str] = []
        for _ in range(3):
            try:
                await store.flush()
                break
            except Exception as exc:  # what asyncpg raises on a dead connection varies
                failures.append(type(exc).__name__)
                assert told == []
        assert told == [True], failures
        assert [r.id for r in await store.runs.list()] == [run.id]
        assert store.writer.dropped == 0


async def test_exclusive_transactions_take_turns_across_replicas(postgres_url: str) -> None:
    # claim() reads then inserts: without the store-wide lock, two replicas
    # under READ COMMITTED could both see no deployment in progress.
    async with Store(postgres_url) as a, Store(postgres_url) as b:
        instance = make_instance("web")
        await a.instances.create(instance)
        now = datetime.now(UTC)

        def deployment() -> Deployment:
            return Deployment(
                id=f"d-{uuid.uuid4().hex[:12]}",
                instance_id=instance.id,
                instance_name="web",
                spec_hash="h",
                previous_hash=None,
                state=DeploymentState.PENDING,
                started=now,
            )

        for _ in range(5):
            claims = await asyncio.gather(
                *(
                    s.deployments.claim(deployment(), abandoned_before=now - timedelta(hours=1))
                    for s in (a, b, a, b)
                )
            )
            assert sum(c is None for c in claims) <= 1
        in_progress = await a.deployments.list(state=DeploymentState.PENDING)
        assert len(in_progress) == 1


async def test_an_unreachable_server_is_a_clear_error_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url("nowhere").replace(f":{postgres_server.port}/", ":1/")
    with pytest.raises(StoreUnavailableError) as caught:
        await Store(url).open()
    message = str(caught.value)
    assert "cannot connect to postgresql://ctrlplane:***@127.0.0.1:1/nowhere" in message
    assert PASSWORD not in message and "s3cret" not in message
    assert "s3cret" not in repr(Store(url))


async def test_a_wrong_password_is_refused_without_showing_it(postgres_url: str) -> None:
    wrong = postgres_url.replace("s3cret", "wr0ng")
    with pytest.raises(StoreUnavailableError, match="password authentication failed") as caught:
        await Store(wrong).open()
    assert "wr0ng" not in str(caught.value)


async def test_the_password_may_come_from_a_file(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    async with Store.from_url(
        postgres_server.url(name, password=False), data_dir=tmp_path, password_file=tmp_path / "pw"
    ) as store:
        assert store.identity.startswith("s-")
        assert store.path is None
        assert store.location == postgres_server.url(name, password=False)
    with pytest.raises(StoreUnavailableError, match="cannot read the password file"):
        await Store(postgres_url, password_file=tmp_path / "missing").open()


async def test_a_write_cancelled_while_waiting_for_its_turn_leaves_nothing_behind(
    postgres_url: str,
) -> None:
    async with Store(postgres_url) as store:
        holder = await _raw(postgres_url)
        try:
            # Another replica's exclusive transaction holds the turn.
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            writing = asyncio.create_task(store.instances.create(make_instance("never")))
            waiting = (
                "SELECT COUNT(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )

            async def blocked() -> bool:
                return bool(await holder.fetchval(waiting))

            await wait_for(blocked, interval=0.01)
            writing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writing
            await tx.rollback()
        finally:
            await holder.close()
        # The pool is usable, and the cancelled write did not happen.
        assert await store.instances.create(make_instance("after"))
        assert [i.name for i in await store.instances.all()] == ["after"]


def test_without_postgresql_a_test_skips_but_in_ci_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        missing("no server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have PostgreSQL"):
        missing("no server")
