"""Telemetry: metrics and resource snapshots of instances, written in batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct, field

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database
    from ctrlplane.store.writer import BatchWriter


class MetricType(StrEnum):
    """What a metric's value means."""

    GAUGE = "gauge"
    """A value that goes up and down (a temperature, a queue length)."""
    COUNTER = "counter"
    """A total that only goes up, except when its process restarts."""
    HISTOGRAM = "histogram"
    """One series of a distribution: a ``_bucket`` (with ``le``), ``_sum`` or ``_count``."""


class Metric(Struct, frozen=True, kw_only=True):
    """One value of one metric of an instance.

    Attributes:
        name: The metric's name; a Prometheus sample keeps its own
            (``requests_total``, ``latency_seconds_bucket``).
        type: ``gauge``, ``counter`` or ``histogram``.
        value: The value. Values that are not finite (NaN, infinities) are
            not stored.
        labels: The series' labels; a metric is one series per name and labels.
        time: When it was collected.
    """

    name: str
    type: MetricType
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    time: datetime


class ResourceSnapshot(Struct, frozen=True, kw_only=True):
    """What an instance's processes use, at one moment, summed over the process tree.

    Attributes:
        processes: How many processes the tree had.
        cpu_percent: CPU use since the previous snapshot, in percent of one
            CPU (so above 100 on several); 0.0 on a collector's first look.
        memory_rss: Resident memory in bytes.
        threads: Threads, all processes together.
        open_files: Open file descriptors (files, sockets, pipes); ``None``
            where the platform or permissions do not tell.
        read_bytes: Bytes read from storage since the processes started;
            ``None`` where not available (macOS, other users' processes).
        write_bytes: Bytes written to storage, likewise.
        time: When it was taken.
    """

    processes: int
    cpu_percent: float
    memory_rss: int
    threads: int
    open_files: int | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None
    time: datetime


_INSERT_METRIC = (
    "INSERT INTO metrics (instance_id, collector, name, type, value, labels, time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SNAPSHOT = (
    "INSERT INTO resource_snapshots (instance_id, collector, time, processes, cpu_percent, "
    "memory_rss, threads, open_files, read_bytes, write_bytes) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The newest row of each series (name and labels) since a time. Labels are
# stored with sorted keys, so one label set is always the same text.
_LATEST_METRICS = """
SELECT name, type, value, labels, time FROM (
    SELECT name, type, value, labels, time,
           row_number() OVER (PARTITION BY name, labels ORDER BY time DESC, id DESC) AS newest
    FROM metrics WHERE instance_id = ? AND time >= ?
) AS series WHERE newest = 1 ORDER BY name, labels
"""
_LATEST_SNAPSHOT = (
    "SELECT processes, cpu_percent, memory_rss, threads, open_files, read_bytes, write_bytes, "
    "time FROM resource_snapshots WHERE instance_id = ? ORDER BY time DESC, id DESC LIMIT 1"
)

_labels_decoder = msgspec.json.Decoder(dict[str, str])


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _time(value: object) -> datetime:
    return datetime.fromtimestamp(float(str(value)), UTC)


class TelemetryStore:
    """Metrics and resource snapshots: queued by the collector, written in batches."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    def record(
        self,
        instance_id: str,
        collector: str,
        metrics: Sequence[Metric] = (),
        snapshot: ResourceSnapshot | None = None,
    ) -> int:
        """Queue what ``collector`` collected of one instance for the next batch.

        Values that are not finite are left out: SQLite stores NaN as NULL,
        and JSON, in which the control API answers, has neither NaN nor
        infinities.

        Returns:
            How many metrics were left out.
        """
        rows = [
            (
                instance_id,
                collector,
                m.name,
                m.type.value,
                m.value,
                msgspec.json.encode(m.labels, order="sorted").decode(),
                m.time.timestamp(),
            )
            for m in metrics
            if math.isfinite(m.value)
        ]
        self._writer.add_many(_INSERT_METRIC, rows)
        skipped = len(metrics) - len(rows)
        if snapshot is not None:
            s = snapshot
            self._writer.add(
                _INSERT_SNAPSHOT,
                (
                    instance_id,
                    collector,
                    s.time.timestamp(),
                    s.processes,
                    s.cpu_percent if math.isfinite(s.cpu_percent) else None,
                    s.memory_rss,
                    s.threads,
                    s.open_files,
                    s.read_bytes,
                    s.write_bytes,
                ),
            )
        return skipped

    async def latest_snapshot(self, instance_id: str) -> ResourceSnapshot | None:
        """The instance's newest resource snapshot, from whichever collector."""
        await self._writer.flush()
        row = await self._db.fetchone(_LATEST_SNAPSHOT, (instance_id,))
        if row is None:
            return None
        r = tuple(row)
        return ResourceSnapshot(
            processes=_int(r[0]) or 0,
            cpu_percent=float(str(r[1])) if r[1] is not None else 0.0,
            memory_rss=_int(r[2]) or 0,
            threads=_int(r[3]) or 0,
            open_files=_int(r[4]),
            read_bytes=_int(r[5]),
            write_bytes=_int(r[6]),
            time=_time(r[7]),
        )

    async def latest_metrics(self, instance_id: str, since: datetime) -> list[Metric]:
        """The newest value of each of the instance's series (name and labels)
        collected at ``since`` or later, ordered by name and labels."""
        await self._writer.flush()
        rows = await self._db.fetch(_LATEST_METRICS, (instance_id, since.timestamp()))
        return [
            Metric(
                name=str(r[0]),
                type=MetricType(str(r[1])),
                value=float(str(r[2])),
                labels=_labels_decoder.decode(str(r[3])),
                time=_time(r[4]),
            )
            for r in rows
        ]
