"""Versioned schema migrations, applied in order and tracked in ``PRAGMA user_version``.

Append new migrations; never edit one that has shipped. Each entry is the
schema version it produces and the SQL that takes version N-1 to N.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE worker_runs (
            id          TEXT PRIMARY KEY,
            worker      TEXT NOT NULL,
            process     TEXT NOT NULL,
            trigger     TEXT NOT NULL,
            trigger_ref TEXT,
            attempt     INTEGER NOT NULL,
            started     REAL NOT NULL,
            finished    REAL,
            outcome     TEXT NOT NULL,
            error       TEXT
        );
        CREATE INDEX worker_runs_by_worker ON worker_runs (worker, started);
        CREATE INDEX worker_runs_by_started ON worker_runs (started);
        """,
    ),
)

LATEST = MIGRATIONS[-1][0]
