"""Instances: what should run (desired), what we last saw (recorded state), and how."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct, field

from ctrlplane.store.errors import StoreError

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database, Row
    from ctrlplane.store.writer import BatchWriter


class InstanceState(StrEnum):
    """The lifecycle states of an instance."""

    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class DesiredState(StrEnum):
    """What the operator wants an instance to be."""

    RUNNING = "running"
    STOPPED = "stopped"


class InstanceSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to run an instance.

    Attributes:
        command: The argv to run; never passed through a shell.
        env: Extra environment variables.
        cwd: Working directory (default: the instance's folder under the data dir).
        ports: Ports the instance listens on, for documentation and checks.
        metrics_url: A Prometheus text endpoint, for telemetry.
    """

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ports: list[int] = field(default_factory=list)
    metrics_url: str | None = None

    def digest(self) -> str:
        """A stable hash of the spec: a changed hash means a new deployment."""
        return hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()[:16]


class Instance(Struct, frozen=True, kw_only=True):
    """One instance as recorded in the store.

    Attributes:
        id: Stable id, kept across spec changes.
        name: Unique, operator-chosen name.
        provider: The provider that runs it (``process`` by default).
        spec: How to run it.
        spec_hash: :meth:`InstanceSpec.digest` of ``spec``.
        desired: What the operator wants.
        state: What was last recorded.
        handle: The provider's opaque handle (a process: ``pid:start_time``).
        state_error: Why it is ``failed``, when it is.
        node: The node it is placed on, for a host-bound provider (``None``:
            not placed, any node may run it).
        created: When it was first recorded.
        updated: When the record last changed.
    """

    id: str
    name: str
    provider: str
    spec: InstanceSpec
    spec_hash: str
    desired: DesiredState
    state: InstanceState
    handle: str | None = None
    state_error: str | None = None
    node: str | None = None
    created: datetime
    updated: datetime


def new_instance_id() -> str:
    return f"i-{uuid.uuid4().hex[:12]}"


class InstanceNotFoundError(StoreError):
    """No instance has that id or name."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"store: no instance {key!r}")


_COLUMNS = (
    "id, name, provider, spec, spec_hash, desired, state, handle, state_error, created, updated, "
    "node"
)
_PLACEHOLDERS = ", ".join("?" for _ in _COLUMNS.split(","))
_UPSERT = " ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in (c.strip() for c in _COLUMNS.split(",")) if c != "id"
)

_spec_decoder = msgspec.json.Decoder(InstanceSpec)


def _row(row: Row) -> Instance:
    r = tuple(row)
    return Instance(
        id=str(r[0]),
        name=str(r[1]),
        provider=str(r[2]),
        spec=_spec_decoder.decode(str(r[3])),
        spec_hash=str(r[4]),
        desired=DesiredState(str(r[5])),
        state=InstanceState(str(r[6])),
        handle=None if r[7] is None else str(r[7]),
        state_error=None if r[8] is None else str(r[8]),
        created=datetime.fromtimestamp(float(str(r[9])), UTC),
        updated=datetime.fromtimestamp(float(str(r[10])), UTC),
        node=None if r[11] is None else str(r[11]),
    )


class InstanceStore:
    """Reads and writes instances. Writes are transactions of their own, not
    batched: an instance's recorded state must be on disk before the event
    that says so is published."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    async def all(self) -> list[Instance]:
        return [
            _row(r) for r in await self._db.fetch(f"SELECT {_COLUMNS} FROM instances ORDER BY name")
        ]

    async def get(self, key: str) -> Instance:
        """The instance with id or name ``key``."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM instances WHERE id = ? OR name = ?", (key, key)
        )
        if row is None:
            raise InstanceNotFoundError(key)
        return _row(row)

    async def find(self, key: str) -> Instance | None:
        try:
            return await self.get(key)
        except InstanceNotFoundError:
            return None

    async def create(self, instance: Instance) -> bool:
        """Insert ``instance``; False if one with its name exists already
        (another process created it first)."""
        return await self._write(" ON CONFLICT DO NOTHING", instance)

    async def put(self, instance: Instance) -> None:
        """Insert ``instance``, or overwrite every field of the one with its id.

        An update in place, not SQLite's ``INSERT OR REPLACE``: that deletes
        the row first, and the delete cascades to the instance's checks.
        """
        await self._write(_UPSERT, instance)

    async def _write(self, conflict: str, instance: Instance) -> bool:
        async with self._writer.transaction() as db:
            count = await db.execute(
                f"INSERT INTO instances ({_COLUMNS}) VALUES ({_PLACEHOLDERS}){conflict}",
                (
                    instance.id,
                    instance.name,
                    instance.provider,
                    msgspec.json.encode(instance.spec).decode(),
                    instance.spec_hash,
                    instance.desired.value,
                    instance.state.value,
                    instance.handle,
                    instance.state_error,
                    instance.created.timestamp(),
                    instance.updated.timestamp(),
                    instance.node,
                ),
            )
            return count > 0

    async def set_state(
        self,
        instance_id: str,
        state: InstanceState,
        *,
        handle: str | None = None,
        keep_handle: bool = True,
        error: str | None = None,
        expect: InstanceState | None = None,
    ) -> bool:
        """Record ``state`` (and the handle); returns False if ``expect`` no longer holds.

        ``expect`` makes the update conditional on the recorded state, so two
        processes reconciling the same instance cannot both apply a change.
        """
        sets = ["state = ?", "state_error = ?", "updated = ?"]
        params: list[object] = [state.value, error, datetime.now(UTC).timestamp()]
        if not keep_handle or handle is not None:
            sets.append("handle = ?")
            params.append(handle)
        sql = f"UPDATE instances SET {', '.join(sets)} WHERE id = ?"
        params.append(instance_id)
        if expect is not None:
            sql += " AND state = ?"
            params.append(expect.value)
        async with self._writer.transaction() as db:
            return await db.execute(sql, params) > 0

    async def place(self, instance_id: str, node: str | None, *, expect: str | None) -> bool:
        """Place the instance on ``node``; False if it is no longer on ``expect``.

        Conditional on the recorded node, so two nodes moving the same
        instance off a dead node cannot both win.
        """
        async with self._writer.transaction() as db:
            count = await db.execute(
                "UPDATE instances SET node = ?, updated = ? "
                "WHERE id = ? AND node IS NOT DISTINCT FROM ?",
                (node, datetime.now(UTC).timestamp(), instance_id, expect),
            )
            return count > 0

    async def on_node(self, node: str) -> list[Instance]:
        """The instances placed on ``node``, by name."""
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM instances WHERE node = ? ORDER BY name", (node,)
        )
        return [_row(r) for r in rows]

    async def count_by_node(self) -> dict[str, int]:
        """How many instances are placed on each node (unplaced ones left out)."""
        rows = await self._db.fetch(
            "SELECT node, COUNT(*) FROM instances WHERE node IS NOT NULL GROUP BY node"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def delete(self, instance_id: str) -> None:
        """Forget the instance, its checks and their history."""
        async with self._writer.transaction() as db:
            await db.execute("DELETE FROM health_results WHERE instance_id = ?", (instance_id,))
            await db.execute("DELETE FROM restarts WHERE instance_id = ?", (instance_id,))
            await db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    async def record_restart(self, instance_id: str, at: datetime) -> None:
        """Remember that the instance was restarted at ``at`` (for crash-loop back-off)."""
        async with self._writer.transaction() as db:
            await db.execute(
                "INSERT INTO restarts (instance_id, time) VALUES (?, ?)",
                (instance_id, at.timestamp()),
            )

    async def clear_restarts(self, instance_id: str) -> None:
        """Forget the instance's restarts: its crash-loop back-off starts afresh."""
        async with self._writer.transaction() as db:
            await db.execute("DELETE FROM restarts WHERE instance_id = ?", (instance_id,))

    async def restarts_since(self, instance_id: str, since: datetime) -> list[datetime]:
        """The instance's restarts at or after ``since``, oldest first."""
        rows = await self._db.fetch(
            "SELECT time FROM restarts WHERE instance_id = ? AND time >= ? ORDER BY time",
            (instance_id, since.timestamp()),
        )
        return [datetime.fromtimestamp(float(r[0]), UTC) for r in rows]
