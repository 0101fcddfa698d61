"""The audit log: one entry per event, where ``(source, id)`` identifies an event."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ctrlplane.store import Store
from ctrlplane.store.audit import AuditEntry
from ctrlplane.store.migrations import LATEST, MIGRATIONS


def _entry(event_id: str, source: str, **kw: object) -> AuditEntry:
    fields: dict[str, object] = {
        "event_id": event_id,
        "type": "instance.drift",
        "source": source,
        "instance_id": "i-1",
        "time": datetime.now(UTC),
        "data": {"n": 1},
    }
    fields.update(kw)
    return AuditEntry(**fields)  # type: ignore[arg-type]


async def test_the_same_id_from_two_sources_is_two_entries(store: Store) -> None:
    store.audit.record(_entry("42", "reconciler"))
    store.audit.record(_entry("42", "billing-service"))
    entries = await store.audit.recent()
    assert sorted((e.source, e.event_id) for e in entries) == [
        ("billing-service", "42"),
        ("reconciler", "42"),
    ]


async def test_a_redelivered_event_is_kept_once(store: Store) -> None:
    first = _entry("42", "reconciler", data={"n": 1})
    store.audit.record(first)
    await store.flush()
    store.audit.record(_entry("42", "reconciler", data={"n": 2}))
    assert await store.audit.recent() == [first]


async def test_migration_keeps_entries_and_never_reuses_an_id(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    raw = sqlite3.connect(path)
    try:
        for version, sql in MIGRATIONS:
            if version > 3:
                break
            raw.executescript(sql)
        raw.execute("PRAGMA user_version = 3")
        insert = (
            "INSERT INTO audit (event_id, type, source, instance_id, time, data) "
            "VALUES (?, 't', ?, NULL, ?, '{}')"
        )
        old = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
        for n in range(3):
            raw.execute(insert, (f"e{n}", "a", old + n))
        # The GarbageCollector deleted the newest id: it must not come back.
        raw.execute("DELETE FROM audit WHERE event_id = 'e2'")
        raw.commit()
    finally:
        raw.close()

    async with Store(path) as store:
        store.audit.record(_entry("e0", "b"))
        store.audit.record(_entry("e0", "a"))  # already there: ignored
        entries = await store.audit.recent()
        assert [(e.source, e.event_id) for e in entries] == [("b", "e0"), ("a", "e1"), ("a", "e0")]

    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST
        ids = [r[0] for r in raw.execute("SELECT id FROM audit ORDER BY id")]
        assert ids == [1, 2, 4]
        indexes = {r[1] for r in raw.execute("PRAGMA index_list(audit)")}
        assert "audit_by_time" in indexes
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        raw.close()
