"""What a worker's ``run`` receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from ctrlplane.actors.runs import Trigger
from ctrlplane.bus.messages import Event, Tick

Publish = Callable[[Event], Awaitable[int]]
PublishMany = Callable[[Sequence[Event]], Awaitable[None]]


class RunContext:
    """The context of one run.

    Attributes:
        worker: The worker's name.
        run_id: Unique id of this run (also in the ``worker_runs`` table).
        trigger: ``tick``, ``event``, ``once`` or ``manual`` (``ctrlplane worker run``:
            then ``tick`` is None).
        tick: The tick that triggered this run, for a periodic run.
        event: The event that triggered this run, for an event run.
        attempt: The delivery attempt, 1-based. Delivery is at least once:
            a run with ``attempt > 1`` may repeat work already done.
    """

    __slots__ = (
        "_base_log",
        "_log",
        "_publish",
        "_publish_many",
        "attempt",
        "event",
        "run_id",
        "tick",
        "trigger",
        "worker",
    )

    def __init__(
        self,
        *,
        worker: str,
        run_id: str,
        trigger: Trigger,
        attempt: int,
        publish: Publish,
        publish_many: PublishMany | None = None,
        log: structlog.typing.FilteringBoundLogger,
        tick: Tick | None = None,
        event: Event | None = None,
    ) -> None:
        self.worker = worker
        self.run_id = run_id
        self.trigger = trigger
        self.attempt = attempt
        self.tick = tick
        self.event = event
        self._base_log = log
        self._log: structlog.typing.FilteringBoundLogger | None = None
        self._publish = publish
        self._publish_many = publish_many

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A structlog logger bound to the worker and this run."""
        # Bound on first use: most runs never log, and binding is not free.
        if self._log is None:
            self._log = self._base_log.bind(
                run_id=self.run_id, trigger=self.trigger.value, attempt=self.attempt
            )
        return self._log

    async def publish(self, event: Event) -> int:
        """Publish ``event`` on the event stream; returns its stream sequence."""
        return await self._publish(event)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish many events at once, pipelined; returns when all are stored."""
        if self._publish_many is not None:
            await self._publish_many(events)
            return
        for event in events:
            await self._publish(event)

    async def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        instance_id: str | None = None,
        subject: str | None = None,
    ) -> Event:
        """Build an event from this worker and publish it; returns the event.

        ``subject`` is the CloudEvents ``subject``: what the event is about
        within this worker (an instance's name, a hostname), if anything.
        """
        event = Event(
            type=type,
            source=self.worker,
            subject=subject,
            instance_id=instance_id,
            data=dict(data or {}),
        )
        await self._publish(event)
        return event

    def __repr__(self) -> str:
        ref = self.tick.msg_id if self.tick else self.event.id if self.event else "-"
        return f"RunContext(worker={self.worker!r}, trigger={self.trigger}, ref={ref!r})"
