"""Publishes ticks for periodic workers at their slot boundaries.

Every process runs a ticker and every ticker publishes every slot; JetStream's
duplicate window keeps one tick per ``worker/slot`` (the ``Nats-Msg-Id``), so
there is no leader to elect and no tick is lost when a process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable
from datetime import datetime

import nats.errors
import structlog

from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.messages import Tick

log = structlog.get_logger("ctrlplane.ticker")


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
        self._specs = {s.name: s for s in specs if s.interval_s > 0}
        self._process = process
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # A publish that is retrying through an outage is not doubled by the
        # next slot: the newer slot is published when the older one settles.
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self.published = 0
        self.duplicates = 0

    def next_run(self, name: str) -> datetime | None:
        """When ``name``'s next slot starts."""
        spec = self._specs.get(name)
        if spec is None:
            return None
        return spec.slot_start_dt(spec.slot_at(self._clock()) + 1)

    def start(self) -> None:
        """Publish the current slot of every worker, then each new slot as it starts."""
        if self._task is None and self._specs:
            self._task = asyncio.create_task(self._loop(), name="ticker")

    async def _loop(self) -> None:
        now = self._clock()
        due: list[tuple[float, str]] = []
        for spec in self._specs.values():
            # The current slot is published at start: a worker runs when its
            # process comes up, and a restart inside one slot is de-duplicated.
            slot = spec.slot_at(now)
            self._publish(spec, slot)
            heapq.heappush(due, (spec.slot_start(slot + 1), spec.name))
        while due:
            when, name = due[0]
            delay = when - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            heapq.heappop(due)
            spec = self._specs[name]
            slot = spec.slot_at(max(self._clock(), when))
            self._publish(spec, slot)
            heapq.heappush(due, (spec.slot_start(slot + 1), name))

    def _publish(self, spec: WorkerSpec, slot: int) -> None:
        running = self._in_flight.get(spec.name)
        if running is not None and not running.done():
            return
        tick = Tick(
            worker=spec.name,
            slot=slot,
            scheduled=spec.slot_start_dt(slot),
            interval=spec.interval,
            origin=self._process,
            node=spec.node,
        )
        task = asyncio.create_task(self._send(tick), name=f"tick-{tick.msg_id}")
        self._in_flight[spec.name] = task

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

    async def stop(self) -> None:
        """Stop publishing. Ticks already published stay for whoever is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = [t for t in self._in_flight.values() if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._in_flight.clear()
