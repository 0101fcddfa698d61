"""HealthRunner: executes the checks of the running instances this node is responsible for."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.deadlines import DeadlineExceeded, Deadlines
from ctrlplane.actors.info import Scope
from ctrlplane.bus.messages import Event
from ctrlplane.checks.text import bounded
from ctrlplane.cluster.shards import shard
from ctrlplane.cluster.types import NodeView
from ctrlplane.events import HealthChange, data_of
from ctrlplane.health import advance, persisted_change, status_of
from ctrlplane.store.db import Store
from ctrlplane.store.health import CheckResult, CheckState, Outcome
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Checker, Probe

DEFAULT_INTERVAL = timedelta(seconds=30)


class HealthRunner:
    """Runs the checks of the running instances of its node's shard, with bounded concurrency.

    Node-scoped: every node sweeps once per interval, and each sweep covers
    the instances this node is responsible for (:func:`~ctrlplane.cluster.shards.shard`):
    those placed on it, and its share by rendezvous hash of those placed on no
    live node. Together the live nodes' sweeps cover every check once; when a
    node dies, the next sweep of each live node (whose view no longer lists
    it) takes over a part of its share. Without a node view, a sweep covers
    every running instance.

    All results of one run are stored in one batched write; each status
    change is published as ``health.passed``, ``health.failed``,
    ``health.degraded``, ``health.recovered`` or ``health.unknown``.

    Args:
        store: The open store.
        checkers: Checkers by check type.
        interval: How often to run (``Config.health_interval``).
        concurrency: Checks in flight at once.
        nodes: Which nodes are live, and this process's own.
    """

    name = "health_runner"
    scope = Scope.NODE

    def __init__(
        self,
        store: Store,
        checkers: dict[str, Checker],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        concurrency: int = 64,
        nodes: NodeView | None = None,
    ) -> None:
        self.interval = interval
        self.nodes = nodes
        # A sweep may take as long as its slowest check plus queueing; it must
        # not be cut off at a short interval.
        self.timeout = max(interval, timedelta(seconds=60))
        self._store = store
        self._checkers = checkers
        self._concurrency = concurrency

    async def run(self, ctx: RunContext) -> None:
        changes = await self.sweep()
        await ctx.publish_many(changes)
        if changes:
            ctx.log.info("health changed", changes=len(changes))

    async def sweep(self) -> list[Event]:
        """Execute this node's checks once, store the results, return the change events."""
        running = {i.id: i for i in await self._responsible_for()}
        if not running:
            return []
        states = await self._store.health.states(with_last=False, instance_ids=running.keys())
        if not states:
            return []
        results: list[CheckResult | None] = [None] * len(states)
        next_index = iter(range(len(states)))
        # One watcher for every check's timeout instead of a timer per check,
        # late by a tenth of the shortest timeout at most.
        shortest = min(s.spec.timeout.total_seconds() for s in states)
        deadlines = Deadlines(min(0.1, max(0.005, shortest / 10)))

        # A fixed pool of workers over the list, not one task per check behind
        # a semaphore: ten thousand pending tasks cost more in allocation and
        # garbage collection than the checks themselves.
        async def work() -> None:
            for i in next_index:
                state = states[i]
                results[i] = await self._execute(state, running[state.instance_id], deadlines)

        watcher = asyncio.create_task(deadlines.watch())
        try:
            await asyncio.gather(*(work() for _ in range(min(self._concurrency, len(states)))))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        changed: list[CheckState] = []
        events: list[Event] = []
        done = [r for r in results if r is not None]
        for state, result in zip(states, done, strict=True):
            new, event_type = advance(state, result)
            if persisted_change(state, new):
                changed.append(new)
            if event_type is not None:
                events.append(_change_event(event_type, running[state.instance_id], state, new))
        # One batch for the whole sweep. A change must be on disk before
        # anyone hears of it; a sweep that changed nothing is left to the
        # writer's next round (within a fraction of a second).
        self._store.health.record(done, changed)
        if events:
            await self._store.flush()
        return events

    async def _responsible_for(self) -> list[Instance]:
        """The running instances whose checks this node runs, as of now."""
        running = [i for i in await self._store.instances.all() if i.state is InstanceState.RUNNING]
        nodes = self.nodes
        # The live list is read once per sweep: a sweep is one consistent shard.
        return running if nodes is None else shard(running, nodes.name, nodes.live())

    async def _execute(
        self, state: CheckState, instance: Instance, deadlines: Deadlines
    ) -> CheckResult:
        """Execute one check under its timeout; never raises for a bad check."""
        spec = state.spec
        checker = self._checkers.get(spec.type)
        started = time.perf_counter()
        latency: timedelta | None = None
        if checker is None:
            known = ", ".join(sorted(self._checkers))
            probe = Probe(
                outcome=Outcome.UNKNOWN, message=f"no checker for type {spec.type!r} ({known})"
            )
        else:
            try:
                probe = await deadlines.within(
                    spec.timeout.total_seconds(), checker.check(spec, instance)
                )
                latency = timedelta(seconds=time.perf_counter() - started)
            except DeadlineExceeded:
                latency = timedelta(seconds=time.perf_counter() - started)
                probe = Probe(
                    outcome=Outcome.FAIL,
                    message=f"timed out after {spec.timeout.total_seconds():g}s",
                )
            except Exception as exc:  # a checker bug is this check's problem alone
                probe = Probe(outcome=Outcome.UNKNOWN, message=f"checker error: {exc!r}")
        if probe.outcome is Outcome.UNKNOWN:
            latency = None
        status = status_of(probe, spec, latency)
        message = probe.message
        if status.value == "degraded" and latency is not None and spec.latency_threshold:
            message = (
                f"{message} (slow: {latency.total_seconds() * 1000:.0f} ms > "
                f"{spec.latency_threshold.total_seconds() * 1000:.0f} ms)"
            )
        return CheckResult(
            instance_id=instance.id,
            check=spec.name,
            time=datetime.now(UTC),
            outcome=probe.outcome,
            status=status,
            latency=latency,
            # A plugin checker's message is bounded like the built-ins' are.
            message=bounded(message),
        )


def _change_event(
    event_type: str, instance: Instance, before: CheckState, after: CheckState
) -> Event:
    return Event(
        type=event_type,
        source=HealthRunner.name,
        subject=instance.name,
        instance_id=instance.id,
        data=data_of(
            HealthChange(
                name=instance.name,
                check=after.name,
                previous=before.status,
                current=after.status,
                message=after.last_message or "",
                latency=(
                    None if after.last_latency is None else after.last_latency.total_seconds()
                ),
            )
        ),
    )
