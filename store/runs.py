"""Worker runs: one row per handling of a tick, an event or a one-shot start."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from msgspec import Struct

from ctrlplane.text import clip

if TYPE_CHECKING:
    # Annotations only: the actors import Outcome and Trigger from here, and a
    # worker module must not pay for the database driver.
    from ctrlplane.store.types import Database
    from ctrlplane.store.writer import BatchWriter, OnCommit

MAX_ERROR = 4096
"""Characters of a run's error that are stored: what a worker raises, or
what untrusted input made it raise, must not fill the disk one row at a time."""

MAX_REF = 256
"""Characters of a run's trigger reference (an event id) that are stored."""


class Outcome(StrEnum):
    """How a run ended, as the ``outcome`` column holds it.

    The actor runtime has the same values in ``ctrlplane.actors.runs`` (the
    store knows nothing of actors, so it keeps its own names for its
    columns; ``tests/test_runs_protocol.py`` checks that they agree).
    """

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """A stale tick coalesced into a newer one."""
    RETRY = "retry"
    """The worker asked to be retried later."""
    DEAD_LETTERED = "dead_lettered"
    """The message could not be handled and went to the dead-letter subject."""


class Trigger(StrEnum):
    """What started a run, as the ``trigger`` column holds it."""

    TICK = "tick"
    EVENT = "event"
    ONCE = "once"
    MANUAL = "manual"


class WorkerRun(Struct, frozen=True, kw_only=True):
    """One run of a worker, as recorded in ``worker_runs``."""

    id: str
    worker: str
    process: str
    trigger: Trigger
    trigger_ref: str | None
    attempt: int
    started: datetime
    finished: datetime | None
    outcome: Outcome
    error: str | None = None


_COLUMNS = "id, worker, process, trigger, trigger_ref, attempt, started, finished, outcome, error"
# A run recorded again (its id known) is overwritten: the newer record wins.
_INSERT = (
    f"INSERT INTO worker_runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ") if c != "id")
)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class RunStore:
    """Records worker runs in batches and reads them back."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    def record(self, run: WorkerRun, on_commit: OnCommit | None = None) -> None:
        """Queue ``run`` for the next batched write; never waits on the disk.

        ``on_commit`` is told once the row is written (``True``) or dropped.
        """
        self.record_row(
            run.id,
            run.worker,
            run.process,
            run.trigger,
            run.trigger_ref,
            run.attempt,
            run.started.timestamp(),
            _ts(run.finished),
            run.outcome,
            run.error,
            on_commit,
        )

    def record_row(
        self,
        id: str,
        worker: str,
        process: str,
        trigger: str,
        trigger_ref: str | None,
        attempt: int,
        started: float,
        finished: float | None,
        outcome: str,
        error: str | None,
        on_commit: OnCommit | None = None,
    ) -> None:
        """:meth:`record` for the hot path: epoch seconds, no Struct to build.

        ``trigger`` and ``outcome`` are the column values: a :class:`Trigger`
        and an :class:`Outcome`, or any ``StrEnum`` with the same values (the
        actor runtime's own).

        ``on_commit`` is called once the row is on disk (``True``) or was
        dropped because the store kept failing (``False``). ``error`` is
        clipped to :data:`MAX_ERROR` characters and ``trigger_ref`` (an
        event id from anyone) to :data:`MAX_REF`, each with a marker.
        """
        if error is not None and len(error) > MAX_ERROR:
            error = clip(error, MAX_ERROR)
        if trigger_ref is not None and len(trigger_ref) > MAX_REF:
            trigger_ref = clip(trigger_ref, MAX_REF)
        self._writer.add(
            _INSERT,
            (
                id,
                worker,
                process,
                trigger,
                trigger_ref,
                attempt,
                started,
                finished,
                outcome,
                error,
            ),
            on_commit,
        )

    def flush_soon(self) -> None:
        """Write queued runs now rather than at the end of the batch interval."""
        self._writer.flush_soon()

    async def flush(self) -> None:
        """Write queued runs and return once they are on disk."""
        await self._writer.flush()

    async def counts(self, *outcomes: str) -> dict[tuple[str, str], int]:
        """How many runs of each worker ended in each of ``outcomes``, in all.

        Counts kept in the store survive restarts, unlike a process's own.
        """
        await self._writer.flush()
        marks = ", ".join("?" for _ in outcomes)
        sql = (
            "SELECT worker, outcome, COUNT(*) FROM worker_runs "
            f"WHERE outcome IN ({marks}) GROUP BY worker, outcome"
        )
        rows = await self._db.fetch(sql, [str(o) for o in outcomes])
        return {(r[0], Outcome(r[1])): int(r[2]) for r in rows}

    async def list(
        self,
        *,
        worker: str | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[WorkerRun]:
        """The newest runs first, optionally of one worker or outcome, or
        started at or after ``since``.

        Flushes pending writes first, so a caller sees its own runs.
        """
        await self._writer.flush()
        where: list[str] = []
        params: list[object] = []
        if worker is not None:
            where.append("worker = ?")
            params.append(worker)
        if outcome is not None:
            where.append("outcome = ?")
            params.append(str(outcome))
        if since is not None:
            where.append("started >= ?")
            params.append(since.timestamp())
        sql = f"SELECT {_COLUMNS} FROM worker_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC LIMIT ?"
        params.append(limit)
        rows = await self._db.fetch(sql, params)
        return [
            WorkerRun(
                id=r[0],
                worker=r[1],
                process=r[2],
                trigger=Trigger(r[3]),
                trigger_ref=r[4],
                attempt=r[5],
                started=_dt(r[6]) or datetime.fromtimestamp(0, UTC),
                finished=_dt(r[7]),
                outcome=Outcome(r[8]),
                error=r[9],
            )
            for r in rows
        ]
