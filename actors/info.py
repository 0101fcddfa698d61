"""What a scheduler reports about each of its workers."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from msgspec import Struct

from ctrlplane.actors.runs import Trigger


class WorkerKind(StrEnum):
    """How a worker is triggered."""

    PERIODIC = "periodic"
    """By ticks, every ``interval`` (and by events if it subscribes to any)."""
    EVENT = "event"
    """By domain events only (interval 0 with subscriptions)."""
    ONCE = "once"
    """Once at start (interval 0, no subscriptions)."""


class Scope(StrEnum):
    """Where a worker's runs happen: once in the cluster, or once on each node."""

    CLUSTER = "cluster"
    """One run per slot (and per event) in the whole cluster: the default."""
    NODE = "node"
    """One run per slot (and per event) on each node: for work that must happen
    on the host it concerns, such as reading local processes."""


class WorkerInfo(Struct, frozen=True, kw_only=True):
    """A snapshot of one worker in one process.

    Attributes:
        name: The worker's name.
        interval: Its interval (0 for event-driven and one-shot workers).
        kind: ``periodic``, ``event`` or ``once``.
        running: Whether a run is in progress in this process.
        last_run: When the last run in this process started.
        last_error: The error of the last failed run, cleared by a success.
        last_error_at: When the last run failed in this process, kept after a
            success (unlike ``last_error``).
        run_count: Runs handled by this process since it started.
        next_run: When the next tick is due (periodic workers only).
        subscriptions: The event types it reacts to.
        error_count: Failed or timed-out runs in this process.
        skipped_count: Ticks skipped: stale ones coalesced away, and redeliveries
            of slots already completed (from the run records, so it survives
            restarts).
        dead_letter_count: Messages dead-lettered (from the run records, so it
            survives restarts).
        blocked_count: Times a run of this worker blocked the event loop
            (past the watchdog's threshold) in this process.
        blocked_seconds: How long those blocks lasted in all.
        process: The process that reports it.
        scope: ``cluster`` or ``node``.
        node: The node whose runs it takes, for a node-scoped worker.
        paused: Whether it is paused (cluster-wide, ``ctrlplane worker pause``):
            its ticks are skipped and its events wait in the stream.
        schedule: Its cron expression, for a worker run on a cron schedule
            (``interval`` is then 0).
        timezone: The IANA time zone its cron expression is read in.
    """

    name: str
    interval: timedelta
    kind: WorkerKind
    running: bool = False
    last_run: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    run_count: int = 0
    next_run: datetime | None = None
    subscriptions: tuple[str, ...] = ()
    error_count: int = 0
    skipped_count: int = 0
    dead_letter_count: int = 0
    blocked_count: int = 0
    blocked_seconds: float = 0.0
    process: str = ""
    scope: Scope = Scope.CLUSTER
    node: str | None = None
    paused: bool = False
    schedule: str | None = None
    timezone: str | None = None


class WorkerFailed(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The ``data`` of a ``worker.failed`` event: a run raised or timed out.

    A field with no value is left out (never null), as in every event's data.
    """

    worker: str
    run_id: str
    trigger: Trigger
    ref: str | None = None
    """The tick (``worker/slot``) or event id that triggered the run; absent
    for a run at start."""
    attempt: int
    outcome: Literal["error", "timeout"]
    error: str | None = None
    """What it raised (clipped); absent for a timeout."""
    process: str
