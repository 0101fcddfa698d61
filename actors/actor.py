"""One worker as an actor: a mailbox fed by NATS, runs one at a time, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.deadlines import DeadlineExceeded, Deadlines
from ctrlplane.actors.errors import Reject, Retry
from ctrlplane.actors.info import WorkerFailed, WorkerInfo, WorkerKind
from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.actors.types import Worker
from ctrlplane.bus.codec import dead_letter, decode_event, decode_tick
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.consumer import PullFeed
from ctrlplane.bus.errors import BusError, DecodeError
from ctrlplane.bus.messages import Event, Tick
from ctrlplane.store.runs import Outcome, RunStore, Trigger, new_run_id

MIN_ACK_WAIT = timedelta(seconds=2)
MAX_ACK_WAIT = timedelta(seconds=30)
# How long a cancelled run may take to unwind before it is abandoned, so that
# stop() returns within grace + 1 s even if a worker swallows cancellation.
CANCEL_WAIT = 0.5
RESTART_BACKOFF = (0.1, 30.0)
NAK_BACKOFF = (1.0, 60.0)
WORKER_FAILED = "worker.failed"


class _Source(Enum):
    TICK = "tick"
    EVENT = "event"


def ack_wait_for(spec: WorkerSpec) -> timedelta:
    """How long JetStream waits for an ack before handing the message to another process.

    In-progress acks are sent every third of it while a run goes on, so it
    bounds how long a process that died holds a message, not how long a run
    may take.
    """
    return min(max(spec.timeout, MIN_ACK_WAIT), MAX_ACK_WAIT)


def nak_delay(attempt: int) -> float:
    """Exponential backoff before an event that failed is delivered again."""
    base, cap = NAK_BACKOFF
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


class Actor:
    """Runs one worker, fed by its durable consumers on NATS.

    Messages are fetched into a bounded mailbox and handled by ``concurrency``
    runners (one by default, so runs never overlap). Every message held, in
    the mailbox or in a run, is kept alive by in-progress acks; whatever is
    still held when the actor stops is handed back with a nak so another
    process can take it at once.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        worker: Worker,
        *,
        bus: Bus,
        runs: RunStore | None,
        process: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.worker = worker
        self._bus = bus
        self._runs = runs
        self._process = process
        self._clock = clock
        self._log = structlog.get_logger("ctrlplane.worker").bind(worker=spec.name)
        self._queue: asyncio.Queue[tuple[_Source, Msg] | None] = asyncio.Queue()
        self._held: dict[str, tuple[Msg, PullFeed]] = {}
        self._capacity = spec.prefetch
        self._feeds: list[PullFeed] = []
        self._intake: list[asyncio.Task[None]] = []
        self._runners: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Run timeouts: one watcher per actor instead of a timer per run,
        # late by a tenth of the timeout at most (and at most 1 s).
        self._timeout_s = spec.timeout.total_seconds()
        self._deadlines = Deadlines(min(1.0, max(0.01, self._timeout_s / 10)))
        self._watchdog: asyncio.Task[None] | None = None
        # What WorkerInfo reports.
        self.running = 0
        self.last_run: float | None = None
        self.last_error: str | None = None
        self.run_count = 0
        self.error_count = 0
        self.skipped_count = 0
        self.dead_letter_count = 0
        self.restarts = 0

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Bind to the worker's consumers (creating them) and start handling."""
        spec, s = self.spec, self._bus.subjects
        ack_wait = ack_wait_for(spec).total_seconds()
        if spec.kind is WorkerKind.PERIODIC:
            tick_consumer = ConsumerConfig(
                durable_name=s.tick_consumer(spec.name),
                filter_subject=s.tick(spec.name),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                # One tick out at a time across every process: no
                # overlapping runs of one worker anywhere.
                max_ack_pending=1,
                ack_wait=ack_wait,
                max_deliver=-1,
            )
            await self._feed(s.ticks_stream, tick_consumer, _Source.TICK, window=1)
        if spec.subscriptions:
            filters = [s.event(p) for p in spec.subscriptions]
            event_consumer = ConsumerConfig(
                durable_name=s.event_consumer(spec.name),
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
                ack_policy=AckPolicy.EXPLICIT,
                # A new worker reacts to what happens from now on, not to
                # the whole retained history.
                deliver_policy=DeliverPolicy.NEW,
                max_ack_pending=max(1000, self._capacity),
                ack_wait=ack_wait,
                # Our own max_attempts dead-letters first; this only stops a
                # message that keeps killing whole processes.
                max_deliver=spec.max_attempts + 3,
            )
            await self._feed(s.events_stream, event_consumer, _Source.EVENT, self._capacity)
        self._watchdog = self._spawn(f"deadlines-{spec.name}", self._deadlines.watch)
        if self._feeds:
            for i in range(spec.concurrency):
                self._runners.append(self._spawn(f"runner-{spec.name}-{i}", self._runner))
            self._heartbeat = self._spawn(f"heartbeat-{spec.name}", self._keep_alive, ack_wait / 3)
        else:
            self._runners.append(asyncio.create_task(self._run_once(), name=f"once-{spec.name}"))

    def _spawn(
        self, name: str, loop: Callable[..., Coroutine[Any, Any, None]], *args: Any
    ) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervise(name, loop, *args), name=name)

    async def _supervise(
        self, name: str, loop: Callable[..., Coroutine[Any, Any, None]], *args: Any
    ) -> None:
        """Restart ``loop`` with backoff if it crashes: a bug in one actor's
        machinery must not take down the process or the other workers."""
        delay, cap = RESTART_BACKOFF
        while True:
            try:
                await loop(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                self._log.exception("actor loop crashed; restarting", loop=name, delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)

    # ----------------------------------------------------------------- intake

    async def _feed(
        self, stream: str, config: ConsumerConfig, source: _Source, window: int
    ) -> None:
        """Create (or update) a durable consumer and start pulling it into the mailbox."""
        assert config.durable_name is not None
        await self._bus.ensure_consumer(stream, config)
        feed: PullFeed

        def deliver(msg: Msg) -> None:
            self._held[msg.reply] = (msg, feed)
            self._queue.put_nowait((source, msg))

        feed = PullFeed(self._bus, stream, config.durable_name, deliver, window=window)
        await feed.start()
        self._feeds.append(feed)
        self._intake.append(self._spawn(f"pull-{source.value}-{self.spec.name}", feed.run))

    async def _keep_alive(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for msg, _ in list(self._held.values()):
                with contextlib.suppress(nats.errors.Error, BusError):
                    await msg.in_progress()

    # --------------------------------------------------------------- handling

    async def _runner(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            source, msg = item
            try:
                await self._handle(source, msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in handling, not in the worker: hand the message back.
                self._log.exception("message handling failed; message handed back")
                await self._settle(msg, "nak")

    async def _handle(self, source: _Source, msg: Msg) -> None:
        attempt = _attempt_of(msg)
        if source is _Source.TICK:
            try:
                tick = decode_tick(msg.data, msg.subject)
            except DecodeError as exc:
                await self._dead_letter(msg, exc.reason, attempt, record_trigger=Trigger.TICK)
                return
            if self._is_stale(tick) and _pending_after(msg) > 0:
                # A newer tick is waiting behind this stale one: coalesce into it.
                self.skipped_count += 1
                self._record(
                    Trigger.TICK, tick.msg_id, attempt, self._clock(), Outcome.SKIPPED, None
                )
                await self._settle(msg, "ack")
                return
            await self._run(Trigger.TICK, msg, attempt, tick=tick)
        else:
            try:
                event = decode_event(msg.data, msg.subject)
            except DecodeError as exc:
                await self._dead_letter(msg, exc.reason, attempt, record_trigger=Trigger.EVENT)
                return
            await self._run(Trigger.EVENT, msg, attempt, event=event)

    def _is_stale(self, tick: Tick) -> bool:
        return self._clock() - tick.scheduled.timestamp() > tick.interval.total_seconds()

    async def _run_once(self) -> None:
        await self._run(Trigger.ONCE, None, 1)

    async def _run(
        self,
        trigger: Trigger,
        msg: Msg | None,
        attempt: int,
        *,
        tick: Tick | None = None,
        event: Event | None = None,
    ) -> None:
        spec = self.spec
        started = self._clock()
        run_id = new_run_id(started)
        ref = tick.msg_id if tick else event.id if event else None
        ctx = RunContext(
            worker=spec.name,
            run_id=run_id,
            trigger=trigger,
            attempt=attempt,
            publish=self._bus.publish_event,
            publish_many=self._bus.publish_events,
            log=self._log,
            tick=tick,
            event=event,
        )
        self.running += 1
        self.last_run = started
        outcome, error = Outcome.OK, None
        retry_delay: timedelta | None = None
        try:
            await self._deadlines.within(self._timeout_s, self.worker.run(ctx))
        except Retry as exc:
            outcome, error, retry_delay = Outcome.RETRY, str(exc), exc.delay
        except Reject as exc:
            outcome, error = Outcome.DEAD_LETTERED, f"rejected: {exc.reason}"
        except DeadlineExceeded:
            outcome, error = Outcome.TIMEOUT, f"timed out after {spec.timeout}"
        except asyncio.CancelledError:
            self.running -= 1
            cancelled = Outcome.CANCELLED
            self._record(trigger, ref, attempt, started, cancelled, "cancelled by stop", run_id)
            raise
        except Exception as exc:
            outcome, error = Outcome.ERROR, _describe(exc)
            ctx.log.error("run failed", error=error, exc_info=exc)
        self.running -= 1
        self.run_count += 1
        if outcome is Outcome.OK:
            self.last_error = None
        elif outcome is Outcome.ERROR or outcome is Outcome.TIMEOUT:
            self._failed(ctx, outcome, error, ref)
        self._record(trigger, ref, attempt, started, outcome, error, run_id)
        if msg is not None:
            await self._settle_after_run(msg, trigger, attempt, outcome, error, retry_delay)

    def _failed(
        self, ctx: RunContext, outcome: Outcome, error: str | None, ref: str | None
    ) -> None:
        """Count a failed run and tell others with ``worker.failed``."""
        self.error_count += 1
        self.last_error = error
        if outcome is Outcome.TIMEOUT:
            ctx.log.error("run timed out", timeout=self.spec.timeout.total_seconds())
        if ctx.event is not None and ctx.event.type == WORKER_FAILED:
            # A failure while handling worker.failed publishes nothing, or
            # one broken subscriber to ">" would feed itself forever.
            return
        self._publish_in_background(
            Event(
                type=WORKER_FAILED,
                source=self.spec.name,
                data=msgspec.to_builtins(
                    WorkerFailed(
                        worker=self.spec.name,
                        run_id=ctx.run_id,
                        trigger=ctx.trigger.value,
                        ref=ref,
                        attempt=ctx.attempt,
                        outcome=outcome.value,
                        error=error,
                        process=self._process,
                    )
                ),
            )
        )

    async def _settle_after_run(
        self,
        msg: Msg,
        trigger: Trigger,
        attempt: int,
        outcome: Outcome,
        error: str | None,
        retry_delay: timedelta | None,
    ) -> None:
        if outcome is Outcome.DEAD_LETTERED:
            await self._dead_letter(msg, error or "rejected", attempt)
        elif trigger is Trigger.TICK:
            # A failed periodic run is not retried: it runs again next slot.
            await self._settle(msg, "nak" if outcome is Outcome.RETRY else "ack")
        elif outcome is Outcome.OK:
            await self._settle(msg, "ack")
        elif attempt >= self.spec.max_attempts:
            await self._dead_letter(msg, f"gave up after {attempt} attempts: {error}", attempt)
        else:
            delay = retry_delay.total_seconds() if retry_delay is not None else nak_delay(attempt)
            await self._settle(msg, "nak", delay)

    async def _dead_letter(
        self, msg: Msg, reason: str, attempt: int, *, record_trigger: Trigger | None = None
    ) -> None:
        """Terminate ``msg`` and keep a copy with ``reason`` on the dead-letter subject."""
        self.dead_letter_count += 1
        self._log.warning("message dead-lettered", subject=msg.subject, reason=reason)
        if record_trigger is not None:
            self._record(
                record_trigger, None, attempt, self._clock(), Outcome.DEAD_LETTERED, reason
            )
        letter = dead_letter(
            worker=self.spec.name,
            subject=msg.subject,
            reason=reason,
            payload=msg.data,
            attempts=attempt,
            stream_seq=_stream_seq(msg),
        )
        try:
            await self._bus.publish_dead_letter(letter)
        except (BusError, nats.errors.Error) as exc:
            # Not kept: hand the message back rather than lose it.
            self._log.error("dead-letter publish failed; message handed back", error=str(exc))
            await self._settle(msg, "nak", 1.0)
            return
        await self._settle(msg, "term")

    async def _settle(self, msg: Msg, how: str, delay: float | None = None) -> None:
        held = self._held.pop(msg.reply, None)
        if held is not None:
            held[1].settled()
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except nats.errors.Error as exc:
            # The server redelivers after ack_wait: at least once, not lost.
            self._log.warning("could not settle message", how=how, error=str(exc))

    # ---------------------------------------------------------------- helpers

    def _record(
        self,
        trigger: Trigger,
        ref: str | None,
        attempt: int,
        started: float,
        outcome: Outcome,
        error: str | None,
        run_id: str | None = None,
    ) -> None:
        if self._runs is None:
            return
        finished = self._clock()
        self._runs.record_row(
            run_id or new_run_id(finished),
            self.spec.name,
            self._process,
            trigger,
            ref,
            attempt,
            started,
            finished,
            outcome,
            error,
        )

    def _publish_in_background(self, event: Event) -> None:
        task = asyncio.create_task(self._publish_quietly(self._bus.publish_event(event)))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _publish_quietly(self, publish: Awaitable[int]) -> None:
        try:
            await publish
        except (BusError, nats.errors.Error) as exc:
            self._log.warning("could not publish worker.failed", error=str(exc))

    def info(self, next_run: datetime | None) -> WorkerInfo:
        """A snapshot for ``Scheduler.workers()`` and the control API."""
        return WorkerInfo(
            name=self.spec.name,
            interval=self.spec.interval,
            kind=self.spec.kind,
            running=self.running > 0,
            last_run=None if self.last_run is None else datetime.fromtimestamp(self.last_run, UTC),
            last_error=self.last_error,
            run_count=self.run_count,
            next_run=next_run,
            subscriptions=self.spec.subscriptions,
            error_count=self.error_count,
            skipped_count=self.skipped_count,
            dead_letter_count=self.dead_letter_count,
            process=self._process,
        )

    # ------------------------------------------------------------------- stop

    async def stop_intake(self) -> None:
        """Take no new messages; hand back those waiting in the mailbox."""
        self._stopping = True
        for task in self._intake:
            task.cancel()
        await asyncio.gather(*self._intake, return_exceptions=True)
        # Unsubscribe before handing anything back: a pull request of ours
        # still waiting on the server would otherwise be handed the very
        # message we nak, and hold it until ack_wait. With no interest left
        # on its inbox the server drops that request. Acks need no
        # subscription, so runs in flight can still settle theirs.
        for feed in self._feeds:
            with contextlib.suppress(nats.errors.Error, BusError):
                await feed.stop()
        self._feeds.clear()
        with contextlib.suppress(nats.errors.Error, BusError):
            await self._bus.nc.flush(timeout=1)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                await self._settle(item[1], "nak")
        for _ in self._runners:
            self._queue.put_nowait(None)

    @property
    def runners(self) -> list[asyncio.Task[None]]:
        return list(self._runners)

    async def finish(self) -> None:
        """After the runs have ended or been abandoned: hand back every
        message still held and stop the heartbeat."""
        for msg, _ in list(self._held.values()):
            await self._settle(msg, "nak")
        for task in (self._heartbeat, self._watchdog):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=2)


def _attempt_of(msg: Msg) -> int:
    """The delivery count, read straight from the ack subject.

    nats-py's ``msg.metadata`` parses the whole subject (and a timestamp) to
    give it; on the hot path the one token is enough. ``$JS.ACK.<stream>.
    <consumer>.<delivered>...`` (v1) or ``$JS.ACK.<domain>.<hash>.<stream>.
    <consumer>.<delivered>...`` (v2).
    """
    tokens = (msg.reply or "").split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[4])
        if len(tokens) >= 11:
            return int(tokens[6])
    except ValueError:
        pass
    return 1


def _pending_after(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_pending)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return 0


def _stream_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
