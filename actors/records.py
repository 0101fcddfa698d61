"""An actor's run records: one row per run, written through a RunRecorder
and told to a RunObserver (the metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ctrlplane.actors.runs import Outcome, Trigger, new_run_id
from ctrlplane.actors.types import OnCommit, RunObserver, RunRecorder
from ctrlplane.bus.kv import SlotCompletion
from ctrlplane.bus.messages import Tick


class Row(NamedTuple):
    """One run (or skip, or refusal) as the run loop knows it."""

    trigger: Trigger
    ref: str | None
    attempt: int
    started: float
    outcome: Outcome
    error: str | None
    run_id: str | None = None


class RunRecords:
    """Writes one worker's rows in this process; nothing when there is no recorder.

    Args:
        recorder: Where rows go (the store's ``RunStore``), or ``None``.
        worker: The worker's name.
        process: This process's id.
        clock: Epoch seconds; a row is finished when it is recorded.
        observer: Told of each run's start and end and of each row, or ``None``.
    """

    def __init__(
        self,
        recorder: RunRecorder | None,
        worker: str,
        process: str,
        clock: Callable[[], float],
        observer: RunObserver | None = None,
    ) -> None:
        self._runs = recorder
        self._worker = worker
        self._process = process
        self._clock = clock
        self._observer = observer

    def started(self, started: float, tick: Tick | None) -> None:
        """A run began at ``started`` (epoch seconds), for ``tick`` if it has one."""
        if self._observer is not None:
            scheduled = None if tick is None else tick.scheduled.timestamp()
            self._observer.run_started(self._worker, started, scheduled)

    def ended(self) -> None:
        """The run announced by :meth:`started` is over (its row may follow later)."""
        if self._observer is not None:
            self._observer.run_ended(self._worker)

    def record(self, row: Row, on_commit: OnCommit | None = None) -> None:
        """Queue ``row``, finished now; ``on_commit`` hears whether it was written."""
        finished = self._clock()
        if self._observer is not None:
            # Only a run has a run id before it is recorded: a skip or a
            # refusal took no time worth a duration.
            duration = None if row.run_id is None else finished - row.started
            self._observer.recorded(self._worker, row.outcome, duration)
        if self._runs is None:
            return
        self._runs.record_row(
            row.run_id or new_run_id(finished),
            self._worker,
            self._process,
            row.trigger,
            row.ref,
            row.attempt,
            row.started,
            finished,
            row.outcome,
            row.error,
            on_commit,
        )

    def recover(self, tick: Tick, done: SlotCompletion) -> None:
        """Write again the record of a run whose slot the ledger says is done.

        Its record may have died with its process before the batch
        committed; the same run id keeps it from being written twice.
        """
        if self._runs is None or not done.run_id:
            return
        self._runs.record_row(
            done.run_id,
            self._worker,
            done.process,
            Trigger.TICK,
            tick.msg_id,
            done.attempt,
            done.started,
            done.finished,
            Outcome(done.outcome),
            done.error,
        )
