"""The shapes users implement: Protocols and aliases only."""

from __future__ import annotations

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
            (with ``subscriptions``) or a one-shot that runs once at start.

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
    """

    name: str
    interval: timedelta

    async def run(self, ctx: RunContext) -> None:
        """Do one cycle of work."""
        ...
