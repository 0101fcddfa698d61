"""Health checks: their settings, their current status, and the history of results."""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from ctrlplane.store.types import Dialect

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database, Executor, Row
    from ctrlplane.store.writer import BatchWriter


class HealthStatus(StrEnum):
    """The status of a check, and of an instance (the worst of its checks)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Passed, but slower than its latency threshold."""
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"
    """Could not be executed (a malformed target, say), or not run yet."""


# Worst first: an instance is as healthy as its least healthy check.
SEVERITY = {
    HealthStatus.UNHEALTHY: 3,
    HealthStatus.UNKNOWN: 2,
    HealthStatus.DEGRADED: 1,
    HealthStatus.HEALTHY: 0,
}


def worst(statuses: list[HealthStatus]) -> HealthStatus:
    """The aggregate of several statuses; ``unknown`` when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default=HealthStatus.UNKNOWN)


class Outcome(StrEnum):
    """What one execution of a check found."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class CheckSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One configured check of an instance.

    Attributes:
        name: Unique among the instance's checks.
        type: ``http``, ``tcp``, ``command``, ``grpc`` or a plugin's type.
        target: A URL (http), ``host:port`` (tcp, grpc).
        command: The argv of a command check; never passed through a shell.
        method: The HTTP method.
        expected_status: The inclusive range of HTTP statuses that pass.
        service: The gRPC service to ask about ("" = the whole server).
        timeout: How long one execution may take.
        latency_threshold: A pass slower than this is ``degraded``.
        failure_threshold: Consecutive failures before ``unhealthy``.
        success_threshold: Consecutive passes before ``healthy`` again.
    """

    name: str
    type: str = "http"
    target: str | None = None
    command: list[str] | None = None
    method: str = "GET"
    expected_status: tuple[int, int] = (200, 399)
    service: str = ""
    timeout: timedelta = timedelta(seconds=2)
    latency_threshold: timedelta | None = None
    failure_threshold: int = 3
    success_threshold: int = 1


class CheckResult(Struct, frozen=True, kw_only=True):
    """One execution of one check."""

    instance_id: str
    check: str
    time: datetime
    outcome: Outcome
    status: HealthStatus
    """The status this result alone would give (healthy, degraded, unhealthy, unknown)."""
    latency: timedelta | None = None
    message: str = ""


class CheckState(Struct, frozen=True, kw_only=True):
    """Where a check stands: its status and the streaks that move it."""

    instance_id: str
    name: str
    spec: CheckSpec
    status: HealthStatus = HealthStatus.UNKNOWN
    consecutive_passes: int = 0
    consecutive_failures: int = 0
    last_checked: datetime | None = None
    last_message: str | None = None
    last_latency: timedelta | None = None
    changed: datetime | None = None


_spec_decoder = msgspec.json.Decoder(CheckSpec)
_STATE_COLUMNS = (
    "c.instance_id, c.name, c.spec, c.status, c.consecutive_passes, c.consecutive_failures, "
    "c.changed"
)
# The last result of each check is the newest row of health_results: kept
# there only, so that a sweep in which nothing changes writes results alone.
_LAST_RESULT = (
    "LEFT JOIN health_results r ON r.id = (SELECT id FROM health_results "
    "WHERE instance_id = c.instance_id AND check_name = c.name "
    "ORDER BY time DESC, id DESC LIMIT 1)"
)
_INSERT_RESULT = (
    "INSERT INTO health_results "
    "(instance_id, check_name, time, outcome, status, latency_ms, message) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_STATE = (
    "UPDATE health_checks SET status = ?, consecutive_passes = ?, consecutive_failures = ?, "
    "changed = ? WHERE instance_id = ? AND name = ?"
)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: object) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(str(value)), UTC)


def _ms(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds() * 1000


def _td(value: object) -> timedelta | None:
    return None if value is None else timedelta(milliseconds=float(str(value)))


@functools.lru_cache(maxsize=65536)
def _spec(text: str) -> CheckSpec:
    # Check settings rarely change and every sweep reads all of them: decode
    # each distinct one once (CheckSpec is frozen, so sharing is safe).
    return _spec_decoder.decode(text)


def _state(row: Row) -> CheckState:
    r = tuple(row)
    return CheckState(
        instance_id=str(r[0]),
        name=str(r[1]),
        spec=_spec(str(r[2])),
        status=HealthStatus(str(r[3])),
        consecutive_passes=int(str(r[4])),
        consecutive_failures=int(str(r[5])),
        changed=_dt(r[6]),
        last_checked=_dt(r[7]) if len(r) > 7 else None,
        last_message=None if len(r) <= 8 or r[8] is None else str(r[8]),
        last_latency=_td(r[9]) if len(r) > 9 else None,
    )


class HealthStore:
    """Check settings and status, and the result history (written in batches)."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    async def set_checks(self, instance_id: str, specs: list[CheckSpec]) -> None:
        """Make ``specs`` the instance's checks: new ones start ``unknown``, changed
        ones keep their status, checks no longer listed are removed."""
        async with self._writer.transaction() as db:
            await self._set_checks(db, instance_id, specs)

    async def _set_checks(self, db: Executor, instance_id: str, specs: list[CheckSpec]) -> None:
        if specs:
            await db.execute(
                f"DELETE FROM health_checks WHERE instance_id = ? AND name NOT IN "
                f"({', '.join('?' for _ in specs)})",
                (instance_id, *(s.name for s in specs)),
            )
        else:
            # Not "NOT IN (NULL)", which is never true: no checks left means none kept.
            await db.execute("DELETE FROM health_checks WHERE instance_id = ?", (instance_id,))
        for spec in specs:
            await db.execute(
                "INSERT INTO health_checks (instance_id, name, spec, status) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (instance_id, name) DO UPDATE SET spec = excluded.spec",
                (instance_id, spec.name, msgspec.json.encode(spec).decode(), HealthStatus.UNKNOWN),
            )

    async def states(
        self,
        instance_id: str | None = None,
        *,
        with_last: bool = True,
        instance_ids: Collection[str] | None = None,
    ) -> list[CheckState]:
        """Every check's state, or one instance's (or those of ``instance_ids``),
        including states still queued.

        ``with_last`` also fills ``last_checked``, ``last_message`` and
        ``last_latency`` from the check's newest result; a sweep, which only
        needs status and streaks, leaves them out. A node's sweep reads only
        its shard's (``instance_ids``): decoding every other node's states
        too is a cost each node would pay for the whole cluster.
        """
        await self._writer.flush()
        if with_last:
            columns = f"{_STATE_COLUMNS}, r.time, r.message, r.latency_ms"
            sql = f"SELECT {columns} FROM health_checks c {_LAST_RESULT}"
        else:
            sql = f"SELECT {_STATE_COLUMNS} FROM health_checks c"
        params: tuple[object, ...] = ()
        if instance_id is not None:
            sql += " WHERE c.instance_id = ?"
            params = (instance_id,)
        elif instance_ids is not None:
            # One parameter, however many ids (no limit on bound variables):
            # a JSON array SQLite unpacks, an array PostgreSQL compares with.
            if self._db.dialect is Dialect.POSTGRESQL:
                sql += " WHERE c.instance_id = ANY(?)"
                params = (list(instance_ids),)
            else:
                sql += " WHERE c.instance_id IN (SELECT value FROM json_each(?))"
                params = (msgspec.json.encode(list(instance_ids)).decode(),)
        sql += " ORDER BY c.instance_id, c.name"
        return [_state(r) for r in await self._db.fetch(sql, params)]

    def record(self, results: list[CheckResult], states: list[CheckState]) -> None:
        """Queue a sweep's results, and the states that changed: one batched write."""
        self._writer.add_many(
            _INSERT_RESULT,
            [
                (
                    r.instance_id,
                    r.check,
                    r.time.timestamp(),
                    r.outcome.value,
                    r.status.value,
                    _ms(r.latency),
                    r.message,
                )
                for r in results
            ],
        )
        for s in states:
            self._writer.add(
                _UPDATE_STATE,
                (
                    s.status.value,
                    s.consecutive_passes,
                    s.consecutive_failures,
                    _ts(s.changed),
                    s.instance_id,
                    s.name,
                ),
            )

    async def results(
        self, instance_id: str, check: str | None = None, *, limit: int = 100
    ) -> list[CheckResult]:
        """The newest results first."""
        await self._writer.flush()
        sql = (
            "SELECT instance_id, check_name, time, outcome, status, latency_ms, message "
            "FROM health_results WHERE instance_id = ?"
        )
        params: list[object] = [instance_id]
        if check is not None:
            sql += " AND check_name = ?"
            params.append(check)
        sql += " ORDER BY time DESC, id DESC LIMIT ?"
        params.append(limit)
        rows = await self._db.fetch(sql, params)
        return [
            CheckResult(
                instance_id=str(r[0]),
                check=str(r[1]),
                time=_dt(r[2]) or datetime.fromtimestamp(0, UTC),
                outcome=Outcome(str(r[3])),
                status=HealthStatus(str(r[4])),
                latency=_td(r[5]),
                message=str(r[6] or ""),
            )
            for r in rows
        ]
