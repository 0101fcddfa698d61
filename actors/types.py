"""The shapes users implement: Protocols and aliases only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ctrlplane.actors.context import RunContext


@runtime_checkable
class Worker(Protocol):
    """A background worker.

    Attributes:
        name: Lowercase letters, digits, ``-`` and ``_``; it appears in NATS
            subjects and durable consumer names.
        interval: How often it runs. ``timedelta(0)`` makes it event-driven
            (with ``subscriptions``), cron-scheduled (with ``schedule``) or a
            one-shot that runs once at start.

    Optional attributes, read when present:

    * ``subscriptions: tuple[str, ...]`` event types (NATS wildcards allowed)
      that trigger a run; a periodic worker may have them too.
    * ``timeout: timedelta`` after which a run is cancelled (default: the
      interval for periodic workers, 60 s otherwise).
    * ``max_attempts: int`` deliveries of one event before it is
      dead-lettered (default 5).
    * ``concurrency: int`` events handled at once (default 1).
    * ``prefetch: int`` events one process holds ahead of its runs (default
      256). Lower it for slow handlers, so that a backlog is shared among
      processes instead of queued behind one.
    * ``schedule: str`` a cron expression (five fields, or six with seconds
      last) to run at each of its occurrences instead of every ``interval``,
      which must then be ``timedelta(0)``: one run per occurrence across the
      cluster. Its default ``timeout`` is the shortest gap between its
      occurrences.
    * ``timezone: str`` the IANA time zone ``schedule`` is read in (default
      ``UTC``); DST is handled as croniter does (README, "Schedules").
    """

    name: str
    interval: timedelta

    async def run(self, ctx: RunContext) -> None:
        """Do one cycle of work."""
        ...


OnCommit = Callable[[bool], None]
"""Told whether a recorded run reached the disk (``True``) or was dropped."""


class RunRecorder(Protocol):
    """Where the runtime records its runs (the store's ``RunStore``).

    ``trigger`` and ``outcome`` arrive as :class:`~ctrlplane.actors.runs.Trigger`
    and :class:`~ctrlplane.actors.runs.Outcome`, which are ``StrEnum``: a
    recorder may take them as plain strings, and needs nothing from
    ``ctrlplane.actors`` to do so.
    """

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
        """Queue one run (times in epoch seconds) without waiting on the disk;
        ``on_commit`` is called once it is written or dropped."""
        ...

    def flush_soon(self) -> None:
        """Write what is queued now rather than at the end of the batch interval."""
        ...

    async def flush(self) -> None:
        """Write what is queued and return once it is on disk."""
        ...

    async def counts(self, *outcomes: str) -> Mapping[tuple[str, str], int]:
        """Runs recorded so far of each worker that ended in each of ``outcomes``."""
        ...


class RunObserver(Protocol):
    """Told of this process's runs as they happen (the control plane's metrics).

    Called on the event path, from the event loop: each call must be cheap,
    must not block and must not raise.
    """

    def run_started(self, worker: str, started: float, scheduled: float | None) -> None:
        """A run of ``worker`` began at ``started``, for a tick whose slot was
        due at ``scheduled`` (``None`` for an event's run); epoch seconds."""
        ...

    def run_ended(self, worker: str) -> None:
        """A run of ``worker`` that :meth:`run_started` announced is over."""
        ...

    def recorded(self, worker: str, outcome: str, duration: float | None) -> None:
        """A row of ``worker`` was recorded with ``outcome`` (a
        :class:`~ctrlplane.actors.runs.Outcome`): a run, with its
        ``duration`` in seconds, or a skipped or refused message (``None``)."""
        ...
