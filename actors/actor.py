"""One worker as an actor: a mailbox fed by NATS, runs one at a time, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from ctrlplane.actors.consumers import (
    UNSETTLED_MARGIN,
    ack_wait_for,
    event_consumer,
    replay_consumer,
    tick_consumer,
)
from ctrlplane.actors.context import RunContext
from ctrlplane.actors.deadlines import DeadlineExceeded, Deadlines
from ctrlplane.actors.delivery import attempt_of, msg_id, pending_after
from ctrlplane.actors.errors import Reject, Retry
from ctrlplane.actors.info import WorkerFailed, WorkerInfo, WorkerKind
from ctrlplane.actors.leases import LeaseKeeper
from ctrlplane.actors.records import Row, RunRecords
from ctrlplane.actors.runs import Outcome, Trigger, new_run_id
from ctrlplane.actors.settle import (
    HAND_BACK,
    Decision,
    Settle,
    after_dead_letter,
    after_fault,
    after_record,
    decide,
)
from ctrlplane.actors.settling import Settler
from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.actors.types import RunObserver, RunRecorder, Worker
from ctrlplane.actors.watchdog import LoopWatchdog
from ctrlplane.bus.codec import MAX_REASON, decode_event, decode_event_msg, decode_tick
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.consumer import PullFeed
from ctrlplane.bus.controls import RUN_HEADER, RunRequest, decode_run_request
from ctrlplane.bus.errors import BusError, DecodeError
from ctrlplane.bus.kv import LedgerError, SlotCompletion, SlotLedger
from ctrlplane.bus.messages import Event, Tick
from ctrlplane.bus.replay import SUBJECT_HEADER, replayed_subject
from ctrlplane.text import clip

# How long a cancelled run may take to unwind before it is abandoned, so that
# stop() returns within grace + 1 s even if a worker swallows cancellation.
CANCEL_WAIT = 0.3
RESTART_BACKOFF = (0.1, 30.0)
WORKER_FAILED = "worker.failed"
# How long a finished periodic run may keep retrying the record of its slot's
# completion (NATS away) before its tick is acked all the same.
LEDGER_PATIENCE = timedelta(minutes=1)


def resolution_for(timeout: timedelta) -> float:
    """How late a run's timeout may fire: a tenth of it, within 10 ms and 1 s,
    rounded down to one of a few steps so actors with like timeouts share
    one watcher (a thousand actors, one wake-up per turn)."""
    wanted = min(1.0, max(0.01, timeout.total_seconds() / 10))
    return max(step for step in _RESOLUTIONS if step <= wanted)


_RESOLUTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _Source(Enum):
    TICK = "tick"
    EVENT = "event"
    REPLAY = "replay"  # a dead letter sent back to this worker alone


class Actor:
    """Runs one worker, fed by its durable consumers on NATS.

    Messages are fetched into a bounded mailbox and handled by ``concurrency``
    runners (one by default, so runs never overlap). Every message held, in
    the mailbox, in a run or waiting for its run's record to be written, is
    kept alive by the :class:`LeaseKeeper`; a message is acked only once the
    record of its run is committed, and a periodic run's slot is written to
    the :class:`SlotLedger` before that, so a redelivered tick of a finished
    slot is skipped. Whatever is still held when the actor stops is handed
    back with a nak so another process can take it at once.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        worker: Worker,
        *,
        bus: Bus,
        runs: RunRecorder | None,
        process: str,
        leases: LeaseKeeper,
        ledger: SlotLedger | None = None,
        watchdog: LoopWatchdog | None = None,
        deadlines: Deadlines | None = None,
        clock: Callable[[], float] = time.time,
        event_types: Mapping[str, type[Any]] | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self.spec = spec
        self.worker = worker
        self._bus = bus
        self._runs = runs
        self._records = RunRecords(runs, spec.name, process, clock, observer)
        self._process = process
        self._leases = leases
        self._ledger = ledger
        self._watchdog = watchdog
        self._clock = clock
        self._log = structlog.get_logger("ctrlplane.worker").bind(worker=spec.name)
        self._queue: asyncio.Queue[tuple[_Source, Msg] | None] = asyncio.Queue()
        self._capacity = spec.prefetch
        self._ack_wait = ack_wait_for(spec).total_seconds()
        self._max_event_size: int | None = None  # read from the bus at start
        self._events_head = bus.subjects.event("")
        self._event_types = event_types
        self._feeds: list[PullFeed] = []
        self._intake: list[asyncio.Task[None]] = []
        self._runners: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._settler = Settler(
            spec.name,
            bus,
            leases,
            self._log,
            tick_consumer=bus.subjects.tick_consumer(spec.name, spec.node),
            node=spec.node,
        )
        self._stopping = False
        # Run timeouts: one watcher (shared by the scheduler's actors of like
        # timeouts) instead of a timer per run, late by a tenth of the timeout
        # at most (and at most 1 s).
        self._timeout_s = spec.timeout.total_seconds()
        self._own_deadlines = deadlines is None
        self._deadlines = deadlines or Deadlines(resolution_for(spec.timeout))
        self._watcher: asyncio.Task[None] | None = None
        # What WorkerInfo reports.
        self.running = 0
        self.last_run: float | None = None
        self.last_error: str | None = None
        # Kept after a success clears last_error: an operator seeing an error
        # count wants to know how long ago the last one was.
        self.last_error_at: float | None = None
        self.run_count = 0
        self.error_count = 0
        self.skipped_count = 0
        self.dead_letter_count = 0
        self.blocked_count = 0
        self.blocked_seconds = 0.0
        self.restarts = 0
        # Paused (cluster-wide, from the worker controls bucket): ticks are
        # skipped, events are not pulled, and those already here wait parked.
        self.paused = False
        self._event_feeds: list[PullFeed] = []
        self._parked: list[tuple[_Source, Msg]] = []

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Bind to the worker's consumers (creating them) and start handling."""
        spec, s = self.spec, self._bus.subjects
        if spec.kind is WorkerKind.PERIODIC:
            await self._feed(s.ticks_stream, tick_consumer(spec, s), _Source.TICK, window=1)
        if spec.subscriptions:
            self._max_event_size = self._bus.max_event_size
            config = event_consumer(spec, s)
            await self._feed(s.events_stream, config, _Source.EVENT, self._capacity)
            replays = replay_consumer(spec, s)
            await self._feed(s.replay_stream, replays, _Source.REPLAY, self._capacity)
        if self._own_deadlines:
            self._watcher = self._spawn(f"deadlines-{spec.name}", self._deadlines.watch)
        if self._feeds:
            for i in range(spec.concurrency):
                self._runners.append(self._spawn(f"runner-{spec.name}-{i}", self._runner))
        else:
            self._runners.append(asyncio.create_task(self._run_once(), name=f"once-{spec.name}"))
        if self._watchdog is not None:
            for task in self._runners:
                self._watchdog.name_task(task, spec.name)

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
            self._settler.hold(msg, feed, self._ack_wait)
            self._queue.put_nowait((source, msg))

        feed = PullFeed(self._bus, stream, config.durable_name, deliver, window=window)
        await feed.start()
        self._feeds.append(feed)
        if source is not _Source.TICK:
            # Replays wait with the events: a paused worker runs neither.
            self._event_feeds.append(feed)
            if self.paused:
                feed.pause()
        self._intake.append(self._spawn(f"pull-{source.value}-{self.spec.name}", feed.run))

    # ---------------------------------------------------------------- control

    def pause(self) -> None:
        """Run nothing until :meth:`resume`: ticks are acked as skipped, events
        stay in the stream (those already fetched are held, unrun). A run in
        progress finishes."""
        if self.paused:
            return
        self.paused = True
        for feed in self._event_feeds:
            feed.pause()
        self._log.info("worker paused")

    def resume(self) -> None:
        """Undo :meth:`pause`: the events held meanwhile are handled first."""
        if not self.paused:
            return
        self.paused = False
        parked, self._parked = self._parked, []
        if not self._stopping:
            for item in parked:
                self._queue.put_nowait(item)
        else:
            self._parked = parked  # stop_intake hands them back
        for feed in self._event_feeds:
            feed.resume()
        self._log.info("worker resumed", held=len(parked))

    # --------------------------------------------------------------- handling

    async def _runner(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            source, msg = item
            if source is not _Source.TICK and self.paused and not self._stopping:
                # Held (its lease kept alive) rather than handed back: a nak
                # would count a delivery against the event's max_attempts.
                self._parked.append(item)
                continue
            try:
                await self._handle(source, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug in handling, or input that breaks it, not the worker:
                # it would fail again at once, so back off, then give up.
                await self._fault(source, msg, exc)

    async def _fault(self, source: _Source, msg: Msg, exc: Exception) -> None:
        """Settle a message whose handling raised outside the worker's run."""
        attempt = attempt_of(msg)
        error = _describe(exc)
        self.error_count += 1
        self.last_error = f"handling failed: {error}"
        decision = after_fault(attempt=attempt, max_attempts=self.spec.max_attempts, error=error)
        self._log.error(
            "message handling failed",
            error=error,
            attempt=attempt,
            settle=decision.how.value,
            delay=decision.delay,
            exc_info=exc,
        )
        if decision.how is not Settle.DEAD_LETTER:
            await self._settler.settle(msg, decision.how, decision.delay)
            return
        trigger = Trigger.TICK if source is _Source.TICK else Trigger.EVENT
        row = Row(trigger, None, attempt, self._clock(), Outcome.DEAD_LETTERED, decision.reason)
        try:
            await self._conclude(msg, decision, row)
        except Exception as again:
            # Whatever broke handling broke its dead-lettering too: hand it
            # back, still with a delay, rather than leave it held or loop.
            self._log.error("dead-lettering failed", error=_describe(again), exc_info=again)
            fallback = after_dead_letter(kept=False, attempt=attempt)
            await self._settler.settle(msg, fallback.how, fallback.delay)

    async def _handle(self, source: _Source, msg: Msg) -> None:
        attempt = attempt_of(msg)
        if not self._settler.surely_ours(msg) and not await self._settler.tick_still_ours(msg):
            # It waited past its lease (the loop was blocked) and JetStream
            # has handed it to another process, which runs it.
            self._log.warning("lease lapsed before the run; left to its redelivery")
            self._settler.drop(msg)
            return
        if source is _Source.TICK and msg.headers and msg.headers.get(RUN_HEADER):
            await self._requested(msg, attempt)
            return
        if source is _Source.TICK:
            try:
                tick = decode_tick(msg.data, msg.subject)
            except DecodeError as exc:
                await self._refuse(msg, Trigger.TICK, attempt, exc.reason)
                return
            problem = self.spec.tick_problem(tick, self._clock())
            if problem is None and msg_id(msg) != tick.msg_id:
                # Only a tick published with its slot's id is de-duplicated
                # by JetStream: another is a second copy of the slot.
                problem = f"tick lacks its de-duplication id (Nats-Msg-Id: {tick.msg_id})"
            if problem is not None:
                await self._refuse(msg, Trigger.TICK, attempt, problem)
                return
            if self.paused:
                await self._skip(msg, Trigger.TICK, tick.msg_id, attempt, "paused")
                return
            stale = self._is_stale(tick) and pending_after(msg) > 0
            done = await self._slot_completed(tick, attempt)
            if stale and done is None:
                # A newer tick is waiting behind this stale one: coalesce into it.
                await self._skip(msg, Trigger.TICK, tick.msg_id, attempt, None)
                return
            if done is not None:
                # Its run ended; only the ack was lost (a crash, a reconnect;
                # a broker killed before it wrote the consumer's state even
                # delivers it again as attempt 1). Its record may have died
                # with its process before the batch committed: write it again
                # from the ledger (same run id, so never twice).
                self._records.recover(tick, done)
                await self._skip(msg, Trigger.TICK, tick.msg_id, attempt, "slot already completed")
                return
            if not self._settler.surely_ours(msg) and not await self._settler.tick_still_ours(msg):
                # The ledger look-up outlasted the lease (NATS was away, a
                # broker restart): it may already run elsewhere.
                self._log.warning("lease lapsed before the run; left to its redelivery")
                self._settler.drop(msg)
                return
            await self._run(Trigger.TICK, msg, attempt, tick=tick)
        else:
            try:
                if source is _Source.REPLAY:
                    event = self._decode_replay(msg)
                else:
                    event = decode_event_msg(
                        msg,
                        events_head=self._events_head,
                        data_types=self._event_types,
                        max_size=self._max_event_size,
                    )
            except DecodeError as exc:
                await self._refuse(msg, Trigger.EVENT, attempt, exc.reason)
                return
            if attempt >= self.spec.max_attempts + UNSETTLED_MARGIN:
                # The consumer's last delivery: every earlier one ended
                # unsettled (its process died or stopped mid-run). JetStream
                # would drop it after this; keep it, unrun, with the reason.
                reason = (
                    f"delivered {attempt} times without being settled; "
                    "its handling may kill the process"
                )
                await self._refuse(msg, Trigger.EVENT, attempt, reason)
                return
            await self._run(Trigger.EVENT, msg, attempt, event=event)

    async def _requested(self, msg: Msg, attempt: int) -> None:
        """A run-now request, come through the tick consumer: one extra run
        that never overlaps another and completes no slot."""
        try:
            request = decode_run_request(msg.data, msg.subject)
        except DecodeError as exc:
            await self._refuse(msg, Trigger.MANUAL, attempt, exc.reason)
            return
        problem = self._request_problem(msg, request)
        if problem is not None:
            await self._refuse(msg, Trigger.MANUAL, attempt, problem)
            return
        if self.paused:
            # Paused after it was asked for: recorded, not run.
            await self._skip(msg, Trigger.MANUAL, request.ref, attempt, "paused")
            return
        await self._run(Trigger.MANUAL, msg, attempt, ref=request.ref)

    def _request_problem(self, msg: Msg, request: RunRequest) -> str | None:
        if request.worker != self.spec.name or request.node != self.spec.node:
            return (
                f"run request for {request.worker!r} (node {request.node!r}) came on the "
                f"subject of {self.spec.name!r} (node {self.spec.node!r})"
            )
        if msg_id(msg) != request.ref:
            return f"run request lacks its de-duplication id (Nats-Msg-Id: {request.ref})"
        return None

    def _decode_replay(self, msg: Msg) -> Event:
        """A replayed dead letter, decoded as it was on the subject it first
        arrived on: the same checks, the same event."""
        subject = replayed_subject(msg)
        if subject is None:
            raise DecodeError(msg.subject, f"a replay without its {SUBJECT_HEADER} header")
        size, limit = len(msg.data), self._max_event_size
        if limit is not None and size > limit:
            raise DecodeError(
                subject, f"event of {size} bytes exceeds the maximum event size ({limit})"
            )
        return decode_event(
            msg.data, subject, events_head=self._events_head, data_types=self._event_types
        )

    async def _refuse(self, msg: Msg, trigger: Trigger, attempt: int, reason: str) -> None:
        """Dead-letter a message that cannot be decoded, and record that."""
        self.last_error = f"refused: {reason}"
        row = Row(trigger, None, attempt, self._clock(), Outcome.DEAD_LETTERED, reason)
        decision = decide(
            trigger,
            Outcome.DEAD_LETTERED,
            attempt=attempt,
            max_attempts=self.spec.max_attempts,
            error=reason,
        )
        await self._conclude(msg, decision, row)

    async def _slot_completed(self, tick: Tick, attempt: int) -> SlotCompletion | None:
        # A first delivery is looked up only while a broker restart may have
        # lost acks: one round trip per tick saved the rest of the time.
        ledger = self._ledger
        if ledger is None or (attempt == 1 and not ledger.suspect()):
            return None
        return await ledger.completed(self.spec.name, tick.slot, self.spec.node)

    def _is_stale(self, tick: Tick) -> bool:
        return self._clock() - tick.scheduled.timestamp() > tick.interval.total_seconds()

    async def _skip(
        self, msg: Msg, trigger: Trigger, ref: str, attempt: int, reason: str | None
    ) -> None:
        self.skipped_count += 1
        now = self._clock()
        row = Row(trigger, ref, attempt, now, Outcome.SKIPPED, reason)
        decision = decide(
            trigger, Outcome.SKIPPED, attempt=attempt, max_attempts=self.spec.max_attempts
        )
        await self._conclude(msg, decision, row)

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
        ref: str | None = None,
    ) -> None:
        spec = self.spec
        started = self._clock()
        run_id = new_run_id(started)
        if ref is None:
            ref = tick.msg_id if tick else event.id if event else None
        # A message of the tick consumer (a tick, a run-now request) blocks
        # the worker's next one: its lease is bounded by the run's timeout.
        bounded = tick is not None or (msg is not None and trigger is Trigger.MANUAL)
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
        if bounded:
            # Kept alive from outside the loop for the run's timeout at most.
            # (An event's lease is not bounded: a copy run twice is allowed,
            # and its deadline cancels a stuck run as soon as the loop turns.)
            assert msg is not None
            self._leases.bound(msg.reply, self._timeout_s)
        self.running += 1
        self._records.started(started, tick)
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
            self._records.ended()
            row = Row(
                trigger, ref, attempt, started, Outcome.CANCELLED, "cancelled by stop", run_id
            )
            self._records.record(row)
            raise
        except Exception as exc:
            outcome, error = Outcome.ERROR, _describe(exc)
            ctx.log.error("run failed", error=error, exc_info=exc)
        self.running -= 1
        self._records.ended()
        decision = decide(
            trigger,
            outcome,
            attempt=attempt,
            max_attempts=spec.max_attempts,
            error=error,
            retry_delay=retry_delay,
        )
        if msg is not None:
            if bounded:
                self._leases.bound(msg.reply, None)
            self._settler.release_window(msg)
        if tick is not None and decision.how is Settle.ACK and self._ledger is not None:
            # The slot is done: say so before the ack, so a redelivery after
            # a lost ack (a crash, a reconnect) is skipped, not run again.
            try:
                done = SlotCompletion(
                    run_id=run_id,
                    process=self._process,
                    attempt=attempt,
                    started=started,
                    finished=self._clock(),
                    outcome=outcome.value,
                    error=error,
                )
                await self._ledger.complete(
                    spec.name,
                    tick.slot,
                    done,
                    within=max(LEDGER_PATIENCE, spec.interval),
                    node=spec.node,
                )
            except LedgerError as exc:
                self._log.error("slot completion not recorded", error=str(exc))
        # Counted once the run is over in every respect, so whoever sees the
        # count also finds the run's record (at least queued for writing).
        self.run_count += 1
        if outcome is Outcome.OK:
            self.last_error = None
        elif outcome is Outcome.ERROR or outcome is Outcome.TIMEOUT:
            self._failed(ctx, outcome, error, ref)
        if decision.how is Settle.DEAD_LETTER:
            outcome, error = Outcome.DEAD_LETTERED, decision.reason
        await self._conclude(
            msg, decision, Row(trigger, ref, attempt, started, outcome, error, run_id)
        )

    def _failed(
        self, ctx: RunContext, outcome: Outcome, error: str | None, ref: str | None
    ) -> None:
        """Count a failed run and tell others with ``worker.failed``."""
        self.error_count += 1
        self.last_error = error
        self.last_error_at = self._clock()
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
                subject=self.spec.name,
                data=msgspec.to_builtins(
                    WorkerFailed(
                        worker=self.spec.name,
                        run_id=ctx.run_id,
                        trigger=ctx.trigger,
                        ref=ref,
                        attempt=ctx.attempt,
                        outcome="timeout" if outcome is Outcome.TIMEOUT else "error",
                        # An error text of any size must not make the event
                        # too large to publish.
                        error=None if error is None else clip(error, MAX_REASON),
                        process=self._process,
                    )
                ),
            )
        )

    # ------------------------------------------------------------- settling

    async def _conclude(self, msg: Msg | None, decision: Decision, row: Row) -> None:
        """Record ``row`` and settle ``msg`` as decided, once the row is on disk.

        A message is never acked before the record of its run is committed:
        a crash in between leaves the message to be delivered again, never
        a run without its record.
        """
        if decision.how is Settle.DEAD_LETTER:
            assert msg is not None
            reason = decision.reason or "rejected"
            self._log.warning("message dead-lettered", subject=msg.subject, reason=reason)
            kept = await self._settler.keep_dead_letter(msg, reason, row.attempt)
            decision = after_dead_letter(kept=kept, attempt=row.attempt)
            self.dead_letter_count += 1
        if msg is None:
            self._records.record(row)
            return
        self._settler.release_window(msg)
        if self._runs is None:
            await self._settler.settle(msg, decision.how, decision.delay)
            return
        decided = decision

        def written(ok: bool) -> None:
            then = after_record(decided, written=ok)
            self._settler.settle_soon(msg, then.how, then.delay)

        self._records.record(row, written)
        if row.trigger is Trigger.TICK or row.trigger is Trigger.MANUAL:
            # One tick out at a time: its record should not wait out the
            # batch interval before the next can be delivered.
            self._runs.flush_soon()

    # ---------------------------------------------------------------- helpers

    def _publish_in_background(self, event: Event) -> None:
        task = asyncio.create_task(self._publish_quietly(self._bus.publish_event(event)))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _publish_quietly(self, publish: Awaitable[int]) -> None:
        try:
            await publish
        except (BusError, nats.errors.Error) as exc:
            self._log.warning("could not publish worker.failed", error=str(exc))

    def note_block(self, seconds: float) -> None:
        """This worker's run blocked the event loop for ``seconds``."""
        self.blocked_count += 1
        self.blocked_seconds += seconds

    def info(self, next_run: datetime | None) -> WorkerInfo:
        """A snapshot for ``Scheduler.workers()`` and the control API."""
        return WorkerInfo(
            name=self.spec.name,
            interval=self.spec.interval,
            kind=self.spec.kind,
            running=self.running > 0,
            last_run=None if self.last_run is None else datetime.fromtimestamp(self.last_run, UTC),
            last_error=self.last_error,
            last_error_at=None
            if self.last_error_at is None
            else datetime.fromtimestamp(self.last_error_at, UTC),
            run_count=self.run_count,
            next_run=next_run,
            subscriptions=self.spec.subscriptions,
            error_count=self.error_count,
            skipped_count=self.skipped_count,
            dead_letter_count=self.dead_letter_count,
            blocked_count=self.blocked_count,
            blocked_seconds=self.blocked_seconds,
            process=self._process,
            scope=self.spec.scope,
            node=self.spec.node,
            paused=self.paused,
            schedule=None if self.spec.cron is None else self.spec.cron.expression,
            timezone=None if self.spec.cron is None else self.spec.cron.timezone,
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
                await self._settler.settle(item[1], HAND_BACK.how)
        parked, self._parked = self._parked, []
        for _, msg in parked:
            await self._settler.settle(msg, HAND_BACK.how)
        for _ in self._runners:
            self._queue.put_nowait(None)

    @property
    def runners(self) -> list[asyncio.Task[None]]:
        return list(self._runners)

    async def finish(self) -> None:
        """After the runs have ended or been abandoned: write their records
        (which acks what they settle), hand back every message still held
        and stop the deadline watcher."""
        if self._runs is not None:
            try:
                await self._runs.flush()
            except Exception as exc:
                self._log.warning("run records not written at stop", error=str(exc))
        await self._settler.finish()
        if self._watchdog is not None:
            for task in self._runners:
                self._watchdog.forget_task(task)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=2)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
