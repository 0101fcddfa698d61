"""Audit entries: every event, kept for ``audit_retention`` (the GarbageCollector prunes them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import Struct

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database
    from ctrlplane.store.writer import BatchWriter


class AuditEntry(Struct, frozen=True, kw_only=True):
    """One event as audited; ``(source, event_id)`` identifies it."""

    event_id: str
    type: str
    source: str
    instance_id: str | None
    time: datetime
    data: dict[str, Any]


# DO NOTHING: events are delivered at least once; (source, event id) keeps one
# entry, and the same id from two sources is two events.
_INSERT = (
    "INSERT INTO audit (event_id, type, source, instance_id, time, data) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id) DO NOTHING"
)


class AuditStore:
    """Writes audit entries in batches and reads them back."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    def record(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the next batched write."""
        self._writer.add(
            _INSERT,
            (
                entry.event_id,
                entry.type,
                entry.source,
                entry.instance_id,
                entry.time.timestamp(),
                msgspec.json.encode(entry.data).decode(),
            ),
        )

    async def recent(self, *, instance_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest entries first."""
        await self._writer.flush()
        sql = "SELECT event_id, type, source, instance_id, time, data FROM audit"
        params: list[object] = []
        if instance_id is not None:
            sql += " WHERE instance_id = ?"
            params.append(instance_id)
        sql += " ORDER BY time DESC, id DESC LIMIT ?"
        params.append(limit)
        rows = await self._db.fetch(sql, params)
        return [
            AuditEntry(
                event_id=str(r[0]),
                type=str(r[1]),
                source=str(r[2]),
                instance_id=None if r[3] is None else str(r[3]),
                time=datetime.fromtimestamp(float(r[4]), UTC),
                data=msgspec.json.decode(str(r[5])),
            )
            for r in rows
        ]
