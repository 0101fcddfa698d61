"""The scheduler: registers workers, starts them as actors, stops them gracefully."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from enum import Enum
from typing import Any

import structlog

from ctrlplane.actors.actor import CANCEL_WAIT, Actor, resolution_for
from ctrlplane.actors.consumers import (
    MIN_ACK_WAIT,
    ack_wait_for,
    check_consumers,
    consumers_needed,
)
from ctrlplane.actors.deadlines import Deadlines
from ctrlplane.actors.errors import InvalidWorkerError, SchedulerStateError
from ctrlplane.actors.info import Scope, WorkerInfo
from ctrlplane.actors.leases import LeaseKeeper
from ctrlplane.actors.runs import Outcome
from ctrlplane.actors.schedule import CATCH_UP
from ctrlplane.actors.spec import WorkerSpec, spec_of
from ctrlplane.actors.ticker import Ticker
from ctrlplane.actors.types import RunObserver, RunRecorder, Worker
from ctrlplane.actors.watchdog import LoopWatchdog
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.controls import WorkerControl, WorkerControls
from ctrlplane.bus.kv import SlotLedger
from ctrlplane.bus.subjects import is_valid_token

log = structlog.get_logger("ctrlplane.scheduler")

DEFAULT_GRACE = timedelta(seconds=10)
# Time left after the grace period and CANCEL_WAIT for handing messages back.
_FINISH_WAIT = 0.3
_STARTING_AT_ONCE = 32


class _State(Enum):
    """Where a scheduler is in its life; it goes through each once, in order."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def process_id() -> str:
    """This process's id in run records and worker listings: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Scheduler:
    """Manages a set of workers: each runs as an actor fed by NATS.

    Args:
        bus: A connected :class:`~ctrlplane.bus.Bus`. May be given later with
            :meth:`use`, before :meth:`start`.
        runs: Where runs are recorded; ``None`` records nothing.
        process: This process's id (default ``host:pid``).
        node: The node this process belongs to: node-scoped workers take
            that node's ticks (and events). Required when one is registered;
            may be given later with :meth:`use`.
        events_max_age: How long the event stream keeps events, if this
            scheduler is the one that creates it.
        clock: Epoch seconds; injectable for tests.
        event_types: Event types whose ``data`` is checked on the way in: an
            event of one of them whose data does not convert (strictly) to
            the Struct given is dead-lettered with the reason. The control
            plane passes :data:`ctrlplane.events.EVENT_TYPES`.
        observer: Told of every run of this process (the control plane's
            metrics); ``None`` tells no one.

    Example::

        scheduler = Scheduler(bus, runs=store.runs)
        scheduler.register(UsageReporter())
        await scheduler.start()
        ...
        await scheduler.stop(grace=timedelta(seconds=10))
    """

    def __init__(
        self,
        bus: Bus | None = None,
        *,
        runs: RunRecorder | None = None,
        process: str | None = None,
        node: str | None = None,
        events_max_age: timedelta = timedelta(days=7),
        clock: Callable[[], float] = time.time,
        event_types: Mapping[str, type[Any]] | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self._bus = bus
        self._event_types = event_types
        self._runs = runs
        self.process = process or process_id()
        self.node = _checked_node(node)
        self._events_max_age = events_max_age
        self._clock = clock
        self._workers: dict[str, tuple[WorkerSpec, Worker]] = {}
        self._actors: dict[str, Actor] = {}
        self._ticker: Ticker | None = None
        self._watchdog: LoopWatchdog | None = None
        self._beat: asyncio.Task[None] | None = None
        self._leases: LeaseKeeper | None = None
        self._deadlines: dict[float, Deadlines] = {}
        self._ledger: SlotLedger | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._controls: WorkerControls | None = None
        self._state = _State.NEW
        self._observer = observer

    def use(self, bus: Bus, runs: RunRecorder | None = None, *, node: str | None = None) -> None:
        """Give the scheduler its bus (and run store, and node) before :meth:`start`."""
        if self._state is not _State.NEW:
            raise SchedulerStateError("use() must come before start()")
        self._bus = bus
        self._runs = runs
        if node is not None:
            self.node = _checked_node(node)

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    def register(self, worker: Worker) -> None:
        """Add ``worker``.

        Raises:
            ValueError: (an :class:`InvalidWorkerError`) for a duplicate or
                invalid name, a negative interval, or a malformed attribute.
            SchedulerStateError: if the scheduler has already started.
        """
        spec = spec_of(worker)
        if spec.name in self._workers:
            raise InvalidWorkerError(spec.name, "a worker with this name is already registered")
        if self._state is not _State.NEW:
            raise SchedulerStateError(
                f"cannot register {spec.name!r}: register workers before start()"
            )
        self._workers[spec.name] = (spec, worker)

    def specs(self) -> list[WorkerSpec]:
        return [spec for spec, _ in self._workers.values()]

    async def start(self) -> None:
        """Create the streams and consumers, start every actor and the ticker.

        Raises:
            TooManyConsumersError: the workers need more consumers on a stream
                than the bus's ``max_consumers`` admits; nothing was created.
            ConsumerLimitError: the stream refused a consumer all the same
                (other processes' workers under the same prefix filled it).
        """
        if self._state is not _State.NEW:
            raise SchedulerStateError(f"start() called on a scheduler that is {self._state.value}")
        bus = self._bus
        if bus is None or not bus.connected:
            raise SchedulerStateError("connect the bus first: Scheduler(bus) or scheduler.use(bus)")
        self._bind_node()
        self._state = _State.STARTING
        try:
            await self._start(bus)
        except BaseException as exc:
            await self._halt(timedelta(0))
            self._state = _State.STOPPED
            if isinstance(exc, BaseExceptionGroup):
                # The first actor that could not start says why.
                raise exc.exceptions[0] from None
            raise
        self._state = _State.RUNNING
        log.info("scheduler started", workers=len(self._actors), process=self.process)

    def _bind_node(self) -> None:
        """Give each node-scoped worker this process's node, or say what is missing."""
        scoped = [n for n, (spec, _) in self._workers.items() if spec.scope is Scope.NODE]
        if not scoped:
            return
        node = self.node
        if node is None:
            raise SchedulerStateError(
                f"node-scoped workers ({', '.join(scoped)}) need this process's node: "
                "Scheduler(node=...) or scheduler.use(bus, node=...)"
            )
        for name in scoped:
            spec, worker = self._workers[name]
            self._workers[name] = (spec.on_node(node), worker)

    async def _start(self, bus: Bus) -> None:
        check_consumers(
            consumers_needed(self.specs()), limit=bus.limits.max_consumers, subjects=bus.subjects
        )
        # Any process may publish a slot's tick until its schedule's horizon
        # has passed (at start, or catching up after a stall): the duplicate
        # window outlasts that, so it is one run whoever publishes it.
        horizons = (s.schedule.horizon for s in self.specs() if s.schedule is not None)
        longest = max(horizons, default=timedelta(0))
        window = max(longest + CATCH_UP, timedelta(minutes=1))
        await bus.ensure_streams(duplicate_window=window, events_max_age=self._events_max_age)
        longest_ack_wait = max((ack_wait_for(s) for s in self.specs()), default=MIN_ACK_WAIT)
        ledger = self._ledger = SlotLedger(
            bus,
            ttl=max(window, timedelta(minutes=2)) + timedelta(minutes=1),
            # A tick whose ack a restarted broker lost comes back within ack_wait.
            suspect_for=2 * longest_ack_wait,
        )
        await ledger.open()
        # Read before any actor starts: a worker paused before this process
        # (re)started never pulls an event or runs a tick.
        controls = self._controls = WorkerControls(bus, self._controlled)
        await controls.open()
        watchdog = LoopWatchdog(asyncio.get_running_loop(), self._note_block)
        self._watchdog = watchdog
        self._beat = asyncio.create_task(watchdog.run(), name="loop-watchdog")
        leases = self._leases = LeaseKeeper(watchdog)
        servers, token = bus.peer_options()
        await asyncio.to_thread(leases.start, servers, token, name=bus.name)
        counts = (
            await self._runs.counts(Outcome.SKIPPED, Outcome.DEAD_LETTERED) if self._runs else {}
        )
        for spec, worker in self._workers.values():
            resolution = resolution_for(spec.timeout)
            deadlines = self._deadlines.get(resolution)
            if deadlines is None:
                deadlines = self._deadlines[resolution] = Deadlines(resolution)
                self._watchers.append(
                    asyncio.create_task(deadlines.watch(), name=f"deadlines-{resolution:g}s")
                )
            actor = Actor(
                spec,
                worker,
                bus=bus,
                runs=self._runs,
                process=self.process,
                leases=leases,
                ledger=ledger,
                watchdog=watchdog,
                deadlines=deadlines,
                clock=self._clock,
                event_types=self._event_types,
                observer=self._observer,
            )
            actor.skipped_count = counts.get((spec.name, Outcome.SKIPPED), 0)
            actor.dead_letter_count = counts.get((spec.name, Outcome.DEAD_LETTERED), 0)
            if controls.paused(spec.name):
                actor.pause()
            self._actors[spec.name] = actor
        # All or nothing: one actor that cannot start cancels the others'
        # starts, and whatever did start is stopped by the caller. A few at a
        # time: a thousand consumer creations at once time out on the server.
        starting = asyncio.Semaphore(_STARTING_AT_ONCE)

        async def start(actor: Actor) -> None:
            async with starting:
                await actor.start()

        async with asyncio.TaskGroup() as group:
            for actor in self._actors.values():
                group.create_task(start(actor), name=f"start-{actor.spec.name}")
        self._ticker = Ticker(bus, self.specs(), process=self.process, clock=self._clock)
        self._ticker.start()

    def _controlled(self, worker: str, control: WorkerControl | None) -> None:
        """A worker's controls changed (here or in another process)."""
        actor = self._actors.get(worker)
        if actor is None:
            return
        if control is not None and control.paused:
            actor.pause()
        else:
            actor.resume()

    @property
    def controls(self) -> WorkerControls:
        """The cluster's worker controls (pause, resume), once started.

        Raises:
            SchedulerStateError: before :meth:`start`.
        """
        if self._controls is None:
            raise SchedulerStateError("start() the scheduler before using its worker controls")
        return self._controls

    def _note_block(self, worker: str, seconds: float) -> None:
        actor = self._actors.get(worker)
        if actor is not None:
            actor.note_block(seconds)

    async def stop(self, grace: timedelta = DEFAULT_GRACE) -> None:
        """Stop gracefully.

        Takes no new messages, hands back those not started, waits up to
        ``grace`` for runs in flight, then cancels them and hands their
        messages back so another process takes them at once. Returns within
        ``grace`` plus about one second even if a worker ignores cancellation
        (such a run is abandoned, and logged).
        """
        if self._state not in (_State.RUNNING, _State.STARTING):
            return
        self._state = _State.STOPPING
        await self._halt(grace)
        self._state = _State.STOPPED
        log.info("scheduler stopped", process=self.process)

    async def _halt(self, grace: timedelta) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace.total_seconds(), 0.0)
        if self._ticker is not None:
            await self._ticker.stop()
        actors = list(self._actors.values())
        await asyncio.gather(*(a.stop_intake() for a in actors), return_exceptions=True)
        runners = [t for a in actors for t in a.runners if not t.done()]
        if runners:
            _, pending = await asyncio.wait(runners, timeout=max(0.0, deadline - loop.time()))
            if pending:
                for task in pending:
                    task.cancel()
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT)
                for task in stuck:
                    log.error("run ignored cancellation; abandoned", task=task.get_name())
        finishing = [asyncio.create_task(a.finish()) for a in actors]
        if finishing:
            await asyncio.wait(finishing, timeout=_FINISH_WAIT)
        tasks = [t for t in (self._beat, *self._watchers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ledger is not None:
            self._ledger.close()
        if self._controls is not None:
            await self._controls.close()
        if self._leases is not None:
            # The thread ends by itself within a turn (it is a daemon): stop()
            # only tells it to, so stopping stays within grace + 1 s.
            self._leases.stop(timeout=0)

    def workers(self) -> list[WorkerInfo]:
        """A snapshot of every registered worker, in registration order."""
        infos = []
        for spec, _ in self._workers.values():
            next_run = self._ticker.next_run(spec.name) if self._ticker else None
            actor = self._actors.get(spec.name)
            if actor is not None:
                infos.append(actor.info(next_run))
            else:
                infos.append(
                    WorkerInfo(
                        name=spec.name,
                        interval=spec.interval,
                        kind=spec.kind,
                        subscriptions=spec.subscriptions,
                        process=self.process,
                        scope=spec.scope,
                        node=self.node if spec.scope is Scope.NODE else None,
                        paused=self._controls is not None and self._controls.paused(spec.name),
                        schedule=None if spec.cron is None else spec.cron.expression,
                        timezone=None if spec.cron is None else spec.cron.timezone,
                    )
                )
        return infos


def _checked_node(node: str | None) -> str | None:
    if node is not None and not is_valid_token(node):
        # It becomes a token of tick subjects and a part of consumer names.
        raise ValueError(
            f"node {node!r} is not a node name: use lowercase letters, digits, '-' and '_'"
        )
    return node
