"""Publishes ticks for periodic workers at their slot boundaries.

Every process runs a ticker and every ticker publishes every slot; JetStream's
duplicate window keeps one tick per ``worker/slot`` (the ``Nats-Msg-Id``), so
there is no leader to elect and no tick is lost when a process dies.

A ticker never passes over a slot in silence: when its loop wakes late (a
loaded machine, a blocked loop) or a publish is still in flight as the next
slot begins, the slots it passed are published too, oldest first, and the
consumer side coalesces the stale ones into the newest (a ``skipped`` run
record each, written once since JetStream keeps one tick per slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import nats.errors
import structlog

from ctrlplane.actors.schedule import Schedule
from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.messages import Tick

log = structlog.get_logger("ctrlplane.ticker")

CATCH_UP_SLOTS = 12
"""At most this many of the latest slots passed over are published at once;
older ones (a clock jump, a loop stalled for minutes) are logged and dropped.
Below the 16 ticks per worker the tick stream keeps, so none of them pushes
out a tick still waiting there."""


class Ticker:
    """Publishes a tick for each periodic worker at the start of each of its slots.

    Args:
        bus: A connected bus.
        specs: The periodic workers.
        process: This process's id, carried in each tick as ``origin``.
        clock: Epoch seconds; injectable so tests can move time.
    """

    def __init__(
        self,
        bus: Bus,
        specs: list[WorkerSpec],
        *,
        process: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._specs = {s.name: s for s in specs if s.schedule is not None}
        self._process = process
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # Each worker's ticks go out one at a time, in slot order, from a
        # queue of its own: a publish retrying through an outage is not
        # doubled by the next slot, which waits behind it instead of being
        # dropped.
        self._queued: dict[str, deque[int]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        # The latest slot queued for each worker: what comes after it is new.
        self._latest: dict[str, int] = {}
        self.published = 0
        self.duplicates = 0
        self.dropped = 0
        """How often slots were passed over unpublished: once per gap wider
        than :data:`CATCH_UP_SLOTS` or older than the schedule's horizon, and
        once per slot an outage pushed out of a full queue."""

    def next_run(self, name: str) -> datetime | None:
        """When ``name``'s next slot starts."""
        spec = self._specs.get(name)
        schedule = None if spec is None else spec.schedule
        if spec is None or schedule is None:
            return None
        return spec.slot_start_dt(schedule.next_slot(schedule.slot_at(self._clock())))

    def start(self) -> None:
        """Publish the current slot of every worker, then each new slot as it starts."""
        if self._task is None and self._specs:
            self._task = asyncio.create_task(self._loop(), name="ticker")

    async def _loop(self) -> None:
        now = self._clock()
        due: list[tuple[float, str]] = []
        for spec in self._specs.values():
            # The current slot is published at start: a worker runs when its
            # process comes up, and a restart inside one slot is de-duplicated
            # (a cron occurrence only within its horizon: a job due at 02:30
            # does not run because a process started at 09:00).
            schedule = self._schedule(spec)
            slot = schedule.slot_at(now)
            self._catch_up(spec, slot, now)
            heapq.heappush(due, (schedule.slot_start(schedule.next_slot(slot)), spec.name))
        while due:
            when, name = due[0]
            delay = when - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            heapq.heappop(due)
            spec = self._specs[name]
            schedule = self._schedule(spec)
            now = self._clock()
            slot = schedule.slot_at(max(now, when))
            self._catch_up(spec, slot, now)
            heapq.heappush(due, (schedule.slot_start(schedule.next_slot(slot)), name))

    def _catch_up(self, spec: WorkerSpec, slot: int, now: float) -> None:
        """Queue ``slot`` and every slot passed over since the last one queued."""
        schedule = self._schedule(spec)
        latest = self._latest.get(spec.name)
        if latest is not None and slot <= latest:
            return
        self._latest[spec.name] = slot
        oldest = now - schedule.horizon.total_seconds()
        # Walk back from the newest: a stall of hours on a per-second
        # schedule must not enumerate every second of it.
        slots: list[int] = []
        s = slot
        while (latest is None or s > latest) and schedule.slot_start(s) >= oldest:
            if len(slots) == CATCH_UP_SLOTS:
                break
            slots.append(s)
            if latest is None:
                # At start only the current slot is this process's to publish:
                # earlier ones were other processes' (or nobody's) to publish.
                break
            s = schedule.prev_slot(s)
        if latest is not None and (not slots or slots[-1] != schedule.next_slot(latest)):
            self.dropped += 1
            log.warning(
                "slots passed over without a tick",
                worker=spec.name,
                after=latest,
                upto=slot,
                published=len(slots),
            )
        queue = self._queued.setdefault(spec.name, deque())
        queue.extend(reversed(slots))
        while len(queue) > CATCH_UP_SLOTS:
            # An outage holds the sender: keep the latest slots.
            queue.popleft()
            self.dropped += 1
        sender = self._senders.get(spec.name)
        if queue and (sender is None or sender.done()):
            self._senders[spec.name] = asyncio.create_task(
                self._drain(spec, queue), name=f"ticks-{spec.name}"
            )

    async def _drain(self, spec: WorkerSpec, queue: deque[int]) -> None:
        while queue:
            slot = queue.popleft()
            tick = Tick(
                worker=spec.name,
                slot=slot,
                scheduled=spec.slot_start_dt(slot),
                interval=spec.slot_length(slot),
                origin=self._process,
                node=spec.node,
            )
            await self._send(tick)

    async def _send(self, tick: Tick) -> None:
        try:
            if await self._bus.publish_tick(tick):
                self.published += 1
            else:
                self.duplicates += 1
        except (BusError, nats.errors.Error) as exc:
            # The next slot's tick is published as usual; the consumer side
            # coalesces whatever backlog the outage leaves.
            log.warning("tick not published", tick=tick.msg_id, error=str(exc))

    @staticmethod
    def _schedule(spec: WorkerSpec) -> Schedule:
        schedule = spec.schedule
        assert schedule is not None, "the ticker holds periodic workers only"
        return schedule

    async def stop(self) -> None:
        """Stop publishing. Ticks already published stay for whoever is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = [t for t in self._senders.values() if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._senders.clear()
        self._queued.clear()
