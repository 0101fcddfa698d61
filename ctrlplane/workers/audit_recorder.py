"""AuditRecorder: keeps every event as an audit entry."""

from __future__ import annotations

from datetime import timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.store.audit import AuditEntry
from ctrlplane.store.db import Store


class AuditRecorder:
    """Writes an audit entry for every event (the GarbageCollector prunes them by age).

    Each run waits for its entry to be on disk before the event is acked, so
    a crash loses nothing; with many runs in flight those waits share one
    transaction (group commit), so entries are still written in batches. An
    event delivered twice is kept once; ``(source, id)`` identifies an event,
    so the same id from two sources is two entries.
    """

    name = "audit_recorder"
    interval = timedelta(0)
    subscriptions = (">",)
    # Order does not matter, and the more runs wait together, the larger
    # each shared transaction.
    concurrency = 32

    def __init__(self, store: Store) -> None:
        self._store = store

    async def run(self, ctx: RunContext) -> None:
        event = ctx.event
        if event is None:
            return
        self._store.audit.record(
            AuditEntry(
                event_id=event.id,
                type=event.type,
                source=event.source,
                instance_id=event.instance_id,
                time=event.time,
                data=event.data,
            )
        )
        await self._store.flush()
