"""One worker as an actor: a mailbox fed by NATS, runs one at a time, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.errors import Reject, Retry
from ctrlplane.actors.info import WorkerInfo, WorkerKind
from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.actors.types import Worker
from ctrlplane.bus.codec import dead_letter, decode_event, decode_tick
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import BusError, DecodeError
from ctrlplane.bus.messages import Event, Tick
from ctrlplane.store.runs import Outcome, RunStore, Trigger, WorkerRun

# How long one pull request waits on the server for a message: only the idle
# case waits this long; a message that arrives is handed over at once.
FETCH_WAIT = 5.0
MIN_ACK_WAIT = timedelta(seconds=2)
MAX_ACK_WAIT = timedelta(seconds=30)
DEFAULT_PREFETCH = 32
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
        self._held: dict[str, Msg] = {}
        self._room = asyncio.Event()
        self._capacity = max(DEFAULT_PREFETCH, getattr(worker, "prefetch", 0), spec.concurrency)
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._intake: list[asyncio.Task[None]] = []
        self._runners: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._once_done = asyncio.Event()
        # What WorkerInfo reports.
        self.running = 0
        self.last_run: datetime | None = None
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
            tick_sub = await self._bus.pull_subscription(
                s.ticks_stream,
                ConsumerConfig(
                    durable_name=s.tick_consumer(spec.name),
                    filter_subject=s.tick(spec.name),
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    # One tick out at a time across every process: no
                    # overlapping runs of one worker anywhere.
                    max_ack_pending=1,
                    ack_wait=ack_wait,
                    max_deliver=-1,
                ),
            )
            self._subs.append(tick_sub)
            self._intake.append(
                self._spawn(f"pump-ticks-{spec.name}", self._pump, tick_sub, _Source.TICK, 1)
            )
        if spec.subscriptions:
            filters = [s.event(p) for p in spec.subscriptions]
            event_sub = await self._bus.pull_subscription(
                s.events_stream,
                ConsumerConfig(
                    durable_name=s.event_consumer(spec.name),
                    filter_subject=filters[0] if len(filters) == 1 else None,
                    filter_subjects=filters if len(filters) > 1 else None,
                    ack_policy=AckPolicy.EXPLICIT,
                    # A new worker reacts to what happens from now on, not
                    # to the whole retained history.
                    deliver_policy=DeliverPolicy.NEW,
                    max_ack_pending=max(1000, self._capacity),
                    ack_wait=ack_wait,
                    # Our own max_attempts dead-letters first; this only stops
                    # a message that keeps killing whole processes.
                    max_deliver=spec.max_attempts + 3,
                ),
            )
            self._subs.append(event_sub)
            self._intake.append(
                self._spawn(
                    f"pump-events-{spec.name}", self._pump, event_sub, _Source.EVENT, self._capacity
                )
            )
        if self._subs:
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

    async def _pump(
        self, sub: JetStreamContext.PullSubscription, source: _Source, batch: int
    ) -> None:
        while not self._stopping:
            room = self._capacity - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await sub.fetch(min(batch, room), timeout=FETCH_WAIT)
            except TimeoutError:
                continue
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.StaleConnectionError,
                nats.errors.NoRespondersError,
            ):
                await asyncio.sleep(0.5)  # reconnecting: try again shortly
                continue
            for msg in msgs:
                self._held[msg.reply] = msg
                self._queue.put_nowait((source, msg))

    async def _keep_alive(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for msg in list(self._held.values()):
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
                self._record(Trigger.TICK, tick.msg_id, attempt, self._now(), Outcome.SKIPPED, None)
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
        try:
            await self._run(Trigger.ONCE, None, 1)
        finally:
            self._once_done.set()

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
        run_id = uuid.uuid4().hex
        ref = tick.msg_id if tick else event.id if event else None
        started = self._now()
        log = self._log.bind(run_id=run_id, trigger=trigger.value, attempt=attempt)
        ctx = RunContext(
            worker=spec.name,
            run_id=run_id,
            trigger=trigger,
            attempt=attempt,
            publish=self._bus.publish_event,
            log=log,
            tick=tick,
            event=event,
        )
        self.running += 1
        self.last_run = started
        outcome, error = Outcome.OK, None
        retry_delay: timedelta | None = None
        try:
            async with asyncio.timeout(spec.timeout.total_seconds()) as deadline:
                await self.worker.run(ctx)
        except Retry as exc:
            outcome, error, retry_delay = Outcome.RETRY, str(exc), exc.delay
        except Reject as exc:
            outcome, error = Outcome.DEAD_LETTERED, f"rejected: {exc.reason}"
        except TimeoutError as exc:
            if deadline.expired():
                outcome, error = Outcome.TIMEOUT, f"timed out after {spec.timeout}"
            else:
                outcome, error = Outcome.ERROR, _describe(exc)
        except asyncio.CancelledError:
            self.running -= 1
            self._record(
                trigger, ref, attempt, started, Outcome.CANCELLED, "cancelled by stop", run_id
            )
            raise
        except Exception as exc:
            outcome, error = Outcome.ERROR, _describe(exc)
            log.error("run failed", error=error, exc_info=exc)
        self.running -= 1
        self.run_count += 1
        if outcome in (Outcome.ERROR, Outcome.TIMEOUT):
            self.error_count += 1
            self.last_error = error
            if outcome is Outcome.TIMEOUT:
                log.error("run timed out", timeout=spec.timeout.total_seconds())
            if not (event is not None and event.type == WORKER_FAILED):
                # A failure while handling worker.failed publishes nothing, or
                # one broken subscriber to ">" would feed itself forever.
                self._publish_in_background(
                    Event(
                        type=WORKER_FAILED,
                        source=spec.name,
                        data={
                            "worker": spec.name,
                            "run_id": run_id,
                            "trigger": trigger.value,
                            "ref": ref,
                            "attempt": attempt,
                            "outcome": outcome.value,
                            "error": error,
                            "process": self._process,
                        },
                    )
                )
        elif outcome is Outcome.OK:
            self.last_error = None
        self._record(trigger, ref, attempt, started, outcome, error, run_id)
        if msg is not None:
            await self._settle_after_run(msg, trigger, attempt, outcome, error, retry_delay)

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
            self._record(record_trigger, None, attempt, self._now(), Outcome.DEAD_LETTERED, reason)
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
        self._held.pop(msg.reply, None)
        self._room.set()
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

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _record(
        self,
        trigger: Trigger,
        ref: str | None,
        attempt: int,
        started: datetime,
        outcome: Outcome,
        error: str | None,
        run_id: str | None = None,
    ) -> None:
        if self._runs is None:
            return
        self._runs.record(
            WorkerRun(
                id=run_id or uuid.uuid4().hex,
                worker=self.spec.name,
                process=self._process,
                trigger=trigger,
                trigger_ref=ref,
                attempt=attempt,
                started=started,
                finished=self._now(),
                outcome=outcome,
                error=error,
            )
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
            last_run=self.last_run,
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
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, BusError):
                await sub.unsubscribe()
        self._subs.clear()
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
        for msg in list(self._held.values()):
            await self._settle(msg, "nak")
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=2)


def _attempt_of(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
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
