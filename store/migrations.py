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
    (
        2,
        """
        CREATE TABLE instances (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            provider    TEXT NOT NULL,
            spec        TEXT NOT NULL,
            spec_hash   TEXT NOT NULL,
            desired     TEXT NOT NULL,
            state       TEXT NOT NULL,
            handle      TEXT,
            state_error TEXT,
            created     REAL NOT NULL,
            updated     REAL NOT NULL
        );
        CREATE TABLE health_checks (
            instance_id          TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
            name                 TEXT NOT NULL,
            spec                 TEXT NOT NULL,
            status               TEXT NOT NULL,
            consecutive_passes   INTEGER NOT NULL DEFAULT 0,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            changed              REAL,
            PRIMARY KEY (instance_id, name)
        );
        CREATE TABLE health_results (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id TEXT NOT NULL,
            check_name  TEXT NOT NULL,
            time        REAL NOT NULL,
            outcome     TEXT NOT NULL,
            status      TEXT NOT NULL,
            latency_ms  REAL,
            message     TEXT
        );
        CREATE INDEX health_results_by_check ON health_results (instance_id, check_name, time);
        CREATE TABLE restarts (
            instance_id TEXT NOT NULL,
            time        REAL NOT NULL
        );
        CREATE INDEX restarts_by_instance ON restarts (instance_id, time);
        CREATE TABLE audit (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id    TEXT NOT NULL UNIQUE,
            type        TEXT NOT NULL,
            source      TEXT NOT NULL,
            instance_id TEXT,
            time        REAL NOT NULL,
            data        TEXT NOT NULL
        );
        CREATE INDEX audit_by_time ON audit (time);
        """,
    ),
    (
        3,
        """
        CREATE TABLE metrics (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id TEXT NOT NULL,
            collector   TEXT NOT NULL,
            name        TEXT NOT NULL,
            type        TEXT NOT NULL,
            value       REAL NOT NULL,
            labels      TEXT NOT NULL,
            time        REAL NOT NULL
        );
        CREATE INDEX metrics_by_instance ON metrics (instance_id, name, time);
        CREATE INDEX metrics_by_time ON metrics (time);
        CREATE TABLE resource_snapshots (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id  TEXT NOT NULL,
            collector    TEXT NOT NULL,
            time         REAL NOT NULL,
            processes    INTEGER,
            cpu_percent  REAL,
            memory_rss   INTEGER,
            threads      INTEGER,
            open_files   INTEGER,
            read_bytes   INTEGER,
            write_bytes  INTEGER
        );
        CREATE INDEX snapshots_by_instance ON resource_snapshots (instance_id, time);
        CREATE INDEX snapshots_by_time ON resource_snapshots (time);
        CREATE TABLE deployments (
            id            TEXT PRIMARY KEY,
            instance_id   TEXT NOT NULL,
            instance_name TEXT NOT NULL,
            spec_hash     TEXT NOT NULL,
            previous_hash TEXT,
            state         TEXT NOT NULL,
            started       REAL NOT NULL,
            finished      REAL,
            error         TEXT
        );
        CREATE INDEX deployments_by_instance ON deployments (instance_id, started);
        CREATE INDEX deployments_by_finished ON deployments (finished);
        CREATE TABLE domains (
            hostname      TEXT PRIMARY KEY,
            instance_name TEXT NOT NULL,
            issuer        TEXT NOT NULL,
            cert_lifetime REAL NOT NULL,
            renew_before  REAL NOT NULL,
            auto_renew    INTEGER NOT NULL DEFAULT 1,
            failures      INTEGER NOT NULL DEFAULT 0,
            next_attempt  REAL,
            last_error    TEXT
        );
        CREATE TABLE certificates (
            serial     TEXT PRIMARY KEY,
            hostname   TEXT NOT NULL,
            issuer     TEXT NOT NULL,
            not_before REAL NOT NULL,
            not_after  REAL NOT NULL,
            cert_path  TEXT NOT NULL,
            key_path   TEXT NOT NULL,
            chain_path TEXT,
            issued     REAL NOT NULL
        );
        CREATE INDEX certificates_by_hostname ON certificates (hostname, not_after);
        """,
    ),
    (
        4,
        # (source, id) identifies an event: two sources may use the same id.
        # SQLite cannot drop a column's UNIQUE, so the table is rebuilt. Row
        # ids are kept, and so is the AUTOINCREMENT counter (moved to the new
        # table's name before the drop; the rename carries it back), so an id
        # the GarbageCollector deleted is never handed out again.
        """
        CREATE TABLE audit_v4 (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id    TEXT NOT NULL,
            type        TEXT NOT NULL,
            source      TEXT NOT NULL,
            instance_id TEXT,
            time        REAL NOT NULL,
            data        TEXT NOT NULL,
            UNIQUE (source, event_id)
        );
        INSERT INTO audit_v4 (id, event_id, type, source, instance_id, time, data)
            SELECT id, event_id, type, source, instance_id, time, data FROM audit;
        DELETE FROM sqlite_sequence WHERE name = 'audit_v4';
        UPDATE sqlite_sequence SET name = 'audit_v4' WHERE name = 'audit';
        DROP TABLE audit;
        ALTER TABLE audit_v4 RENAME TO audit;
        CREATE INDEX audit_by_time ON audit (time);
        """,
    ),
    (
        5,
        # A cluster: a host-bound instance is placed on a node, and each store
        # has an identity, which every node advertises, so that a node whose
        # store differs from its cluster's refuses to join instead of
        # splitting the state.
        """
        ALTER TABLE instances ADD COLUMN node TEXT;
        CREATE INDEX instances_by_node ON instances (node);
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        INSERT INTO meta (key, value) VALUES ('store_id', 's-' || lower(hex(randomblob(16))));
        """,
    ),
)

LATEST = MIGRATIONS[-1][0]
