"""Deployments: each time an instance is started on a spec it has not run before."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from msgspec import Struct

from ctrlplane.store.errors import StoreError

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database, Executor, Row
    from ctrlplane.store.writer import BatchWriter


class DeploymentState(StrEnum):
    """Where a deployment stands. The last four are final."""

    PENDING = "pending"
    """Recorded; the instance is not being touched yet."""
    RUNNING = "running"
    """The provider is stopping the old spec or starting the new one."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The new spec did not start, and the previous one could not be brought back."""
    ROLLED_BACK = "rolled_back"
    """The new spec did not start; the previous one runs again."""
    CANCELLED = "cancelled"
    """Abandoned: the process running it went away before it finished."""


IN_PROGRESS = frozenset({DeploymentState.PENDING, DeploymentState.RUNNING})
FINISHED = frozenset(DeploymentState) - IN_PROGRESS


class Deployment(Struct, frozen=True, kw_only=True):
    """One deployment of one instance.

    Attributes:
        id: ``d-`` and 12 hex digits.
        instance_id: The instance deployed.
        instance_name: Its name when deployed (kept if the instance goes).
        spec_hash: The spec deployed (:meth:`InstanceSpec.digest`).
        previous_hash: The spec it replaced; ``None`` for a first start.
        state: Where it stands.
        started: When it was recorded.
        finished: When it reached a final state.
        error: Why it failed or was rolled back or cancelled.
    """

    id: str
    instance_id: str
    instance_name: str
    spec_hash: str
    previous_hash: str | None = None
    state: DeploymentState
    started: datetime
    finished: datetime | None = None
    error: str | None = None


def new_deployment_id() -> str:
    return f"d-{uuid.uuid4().hex[:12]}"


class DeploymentNotFoundError(StoreError):
    """No deployment has that id."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(f"store: no deployment {deployment_id!r}")


_COLUMNS = (
    "id, instance_id, instance_name, spec_hash, previous_hash, state, started, finished, error"
)

_IN_PROGRESS_SQL = ", ".join(f"'{s.value}'" for s in sorted(IN_PROGRESS))


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _row(row: Row) -> Deployment:
    r = tuple(row)
    return Deployment(
        id=str(r[0]),
        instance_id=str(r[1]),
        instance_name=str(r[2]),
        spec_hash=str(r[3]),
        previous_hash=None if r[4] is None else str(r[4]),
        state=DeploymentState(str(r[5])),
        started=datetime.fromtimestamp(float(str(r[6])), UTC),
        finished=None if r[7] is None else datetime.fromtimestamp(float(str(r[7])), UTC),
        error=None if r[8] is None else str(r[8]),
    )


class DeploymentStore:
    """Reads and writes deployments. Writes are transactions of their own, on
    disk before the event that tells of them is published."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    async def create(self, deployment: Deployment) -> None:
        """Record ``deployment`` as it is."""
        async with self._writer.transaction() as db:
            await self._insert(db, deployment)

    async def claim(
        self, deployment: Deployment, *, abandoned_before: datetime
    ) -> Deployment | None:
        """Record ``deployment`` unless another of its instance is in progress.

        Check and insert are one transaction, so of two processes deploying
        one instance at once only one gets it.

        Returns:
            ``None`` if ``deployment`` was recorded, else the one in progress.
        """
        async with self._writer.transaction() as db:
            busy = await self._busy(db, deployment.instance_id, abandoned_before)
            if busy is None:
                await self._insert(db, deployment)
        return busy

    async def busy(self, instance_id: str, *, abandoned_before: datetime) -> Deployment | None:
        """The deployment of the instance in progress, if any.

        One still in progress that started before ``abandoned_before`` was
        left behind by a process that went away: it is marked ``cancelled``
        (here, and in :meth:`claim`) and does not count.
        """
        async with self._writer.transaction() as db:
            return await self._busy(db, instance_id, abandoned_before)

    async def _busy(
        self, db: Executor, instance_id: str, abandoned_before: datetime
    ) -> Deployment | None:
        await db.execute(
            f"UPDATE deployments SET state = ?, finished = ?, error = ? "
            f"WHERE instance_id = ? AND state IN ({_IN_PROGRESS_SQL}) AND started < ?",
            (
                DeploymentState.CANCELLED.value,
                datetime.now(UTC).timestamp(),
                "abandoned: the process deploying it did not finish in time",
                instance_id,
                abandoned_before.timestamp(),
            ),
        )
        row = await db.fetchone(
            f"SELECT {_COLUMNS} FROM deployments "
            f"WHERE instance_id = ? AND state IN ({_IN_PROGRESS_SQL}) ORDER BY started LIMIT 1",
            (instance_id,),
        )
        return None if row is None else _row(row)

    async def _insert(self, db: Executor, d: Deployment) -> None:
        await db.execute(
            f"INSERT INTO deployments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.id,
                d.instance_id,
                d.instance_name,
                d.spec_hash,
                d.previous_hash,
                d.state.value,
                d.started.timestamp(),
                _ts(d.finished),
                d.error,
            ),
        )

    async def update(
        self, deployment_id: str, state: DeploymentState, *, error: str | None = None
    ) -> Deployment:
        """Move the deployment to ``state``; a final state sets ``finished``."""
        finished = datetime.now(UTC).timestamp() if state in FINISHED else None
        async with self._writer.transaction() as db:
            await db.execute(
                "UPDATE deployments SET state = ?, finished = ?, error = ? WHERE id = ?",
                (state.value, finished, error, deployment_id),
            )
        return await self.get(deployment_id)

    async def get(self, deployment_id: str) -> Deployment:
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM deployments WHERE id = ?", (deployment_id,)
        )
        if row is None:
            raise DeploymentNotFoundError(deployment_id)
        return _row(row)

    async def list(
        self,
        *,
        instance: str | None = None,
        instance_id: str | None = None,
        state: DeploymentState | None = None,
        limit: int = 100,
    ) -> list[Deployment]:
        """The newest first, of one instance (by id, or by the name it had) or
        all, in one state or any."""
        sql = f"SELECT {_COLUMNS} FROM deployments"
        where: list[str] = []
        params: list[object] = []
        if instance is not None:
            where.append("(instance_id = ? OR instance_name = ?)")
            params += [instance, instance]
        if instance_id is not None:
            where.append("instance_id = ?")
            params.append(instance_id)
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        # rowid: the insertion order (SQLite's own; a column on PostgreSQL).
        sql += " ORDER BY started DESC, rowid DESC LIMIT ?"
        params.append(limit)
        return [_row(r) for r in await self._db.fetch(sql, params)]
