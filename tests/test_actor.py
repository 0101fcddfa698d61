"""The promises an actor keeps under faults (issue 8), against a real nats-server:
completed slots are not run again, acks follow records, Retry is honoured for
ticks, a blocked loop is named, and a scheduler starts all or nothing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.actors.consumers import UNSETTLED_MARGIN, ack_wait_for, tick_consumer
from ctrlplane.actors.errors import Retry
from ctrlplane.actors.spec import spec_of
from ctrlplane.bus import Bus, BusLimits, Event, EventTooLargeError, Tick, encode
from ctrlplane.bus.kv import SlotCompletion, SlotLedger
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.store import Outcome, Store
from tests.helpers import dead_letters, wait_for


class Counter:
    """A periodic worker that counts its runs (one a day: only the test's ticks)."""

    def __init__(self, name: str = "counter", *, retry: timedelta | None = None) -> None:
        self.name = name
        self.interval = timedelta(days=1)
        self.retry = retry
        self.runs: list[tuple[int, int, float]] = []  # slot, attempt, monotonic start

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        self.runs.append((ctx.tick.slot, ctx.attempt, time.monotonic()))
        if self.retry is not None and len(self.runs) == 1:
            raise Retry(self.retry)


class OnJob:
    interval = timedelta(0)
    subscriptions = ("job.*",)

    def __init__(self) -> None:
        self.name = "on-job"
        self.seen: list[str] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.seen.append(ctx.event.id)


class Blocker:
    """Blocks the event loop once, as a worker calling time.sleep would."""

    def __init__(self, seconds: float) -> None:
        self.name = "blocker"
        self.interval = timedelta(days=1)
        self.seconds = seconds
        self.done = asyncio.Event()

    async def run(self, ctx: RunContext) -> None:
        time.sleep(self.seconds)  # noqa: ASYNC251 - the point of this worker
        self.done.set()


@pytest_asyncio.fixture
async def scheduler(bus: Bus, store: Store) -> AsyncIterator[Scheduler]:
    s = Scheduler(bus, runs=store.runs, process="test-actor")
    try:
        yield s
    finally:
        await s.stop(grace=timedelta(seconds=1))


async def test_a_redelivered_tick_of_a_completed_slot_is_skipped(
    bus: Bus, store: Store, scheduler: Scheduler
) -> None:
    worker = Counter()
    spec = spec_of(worker)
    s = bus.subjects
    await bus.ensure_streams(duplicate_window=timedelta(days=1, minutes=1))
    slot = spec.slot_at(time.time())
    tick = Tick(
        worker=worker.name,
        slot=slot,
        scheduled=spec.slot_start_dt(slot),
        interval=spec.interval,
        origin="elsewhere",
    )
    await bus.publish_tick(tick)
    # Another process took the tick, ran it and recorded the slot, then died
    # before its ack reached NATS: the tick comes back as attempt 2.
    await bus.js.add_consumer(s.ticks_stream, tick_consumer(spec_of(worker), s))
    sub = await bus.js.pull_subscribe_bind(s.tick_consumer(worker.name), s.ticks_stream)
    (held,) = await sub.fetch(1, timeout=5)
    ledger = SlotLedger(bus, ttl=timedelta(days=1, minutes=5))
    await ledger.open()
    # Its own record died with it (the batch had not committed): the ledger
    # entry is enough to write it again.
    elsewhere = SlotCompletion(
        run_id="run-elsewhere", process="dead:1", attempt=1, started=100.0, finished=101.0
    )
    await ledger.complete(worker.name, slot, elsewhere, within=timedelta(seconds=5))
    await held.nak()
    await sub.unsubscribe()

    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: scheduler.workers()[0].skipped_count == 1)
    assert worker.runs == []
    await wait_for(lambda: _has_len(store.runs.list(worker=worker.name), 2))
    skip, recovered = await store.runs.list(worker=worker.name)
    assert skip.outcome is Outcome.SKIPPED
    assert skip.error == "slot already completed"
    assert skip.attempt == 2
    assert skip.trigger_ref == tick.msg_id
    assert (recovered.id, recovered.process, recovered.outcome) == (
        "run-elsewhere",
        "dead:1",
        Outcome.OK,
    )
    assert recovered.trigger_ref == tick.msg_id and recovered.started.timestamp() == 100.0


async def test_a_run_marks_its_slot_completed(bus: Bus, scheduler: Scheduler) -> None:
    worker = Counter()
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.runs) == 1)
    ledger = SlotLedger(bus, ttl=timedelta(days=1))
    await ledger.open()
    slot = worker.runs[0][0]
    await wait_for(lambda: _is_done(ledger.completed(worker.name, slot)))
    assert await ledger.completed(worker.name, slot + 1) is None


async def test_an_event_is_acked_only_once_its_run_is_recorded(bus: Bus, tmp_path: Path) -> None:
    # Batches written every 30 s unless asked: the ack must wait for them.
    store = Store(tmp_path / "slow.db", flush_interval=timedelta(seconds=30))
    await store.open()
    scheduler = Scheduler(bus, runs=store.runs, process="test-slow")
    worker = OnJob()
    scheduler.register(worker)
    try:
        await scheduler.start()
        await bus.publish_event(Event(type="job.done", source="test", id="job-1"))
        await wait_for(lambda: worker.seen == ["job-1"])
        consumer = bus.subjects.event_consumer(worker.name)

        async def ack_pending() -> int:
            info = await bus.js.consumer_info(bus.subjects.events_stream, consumer)
            return int(info.num_ack_pending or 0)

        assert await ack_pending() == 1  # ran, not yet recorded, so not acked
        await store.flush()
        await wait_for(lambda: _is(ack_pending(), 0))
        (run,) = await store.runs.list(worker=worker.name)
        assert run.outcome is Outcome.OK and run.trigger_ref == "job-1"
    finally:
        await scheduler.stop(grace=timedelta(seconds=1))
        await store.close()


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _is_done(value: Any) -> bool:
    return await value is not None


async def _has_len(value: Any, expected: int) -> bool:
    return len(await value) == expected


async def test_retry_from_a_periodic_worker_waits_its_delay(
    scheduler: Scheduler, store: Store
) -> None:
    worker = Counter(retry=timedelta(seconds=1.5))
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.runs) == 2, within=20)
    (slot1, attempt1, t1), (slot2, attempt2, t2) = worker.runs
    assert (slot2, attempt1, attempt2) == (slot1, 1, 2)
    # A load can only make the redelivery later, never earlier.
    assert t2 - t1 >= 1.4

    async def outcomes() -> list[Outcome]:
        return [r.outcome for r in await store.runs.list(worker=worker.name)]

    # The second run's record follows its end (and its slot's completion).
    await wait_for(lambda: _has_len(outcomes(), 2))
    assert await outcomes() == [Outcome.OK, Outcome.RETRY]


async def test_a_worker_that_blocks_the_loop_is_named_and_counted(
    scheduler: Scheduler,
) -> None:
    blocker = Blocker(seconds=1.6)
    scheduler.register(blocker)
    scheduler.register(Counter("bystander"))
    await scheduler.start()
    async with asyncio.timeout(20):
        await blocker.done.wait()
    await wait_for(lambda: scheduler.workers()[0].blocked_count == 1)
    info, bystander = scheduler.workers()
    assert info.blocked_seconds >= 1.0
    assert bystander.blocked_count == 0


class _Refusing(Bus):
    """A bus on which one worker's consumer cannot be created and another's
    creation is slow, to show a failed start cancels its siblings."""

    def __init__(self, subjects: Subjects) -> None:
        super().__init__(subjects, name="refusing")
        self.slow_cancelled = asyncio.Event()

    async def ensure_consumer(self, stream: str, config: ConsumerConfig) -> None:
        if config.durable_name == self.subjects.tick_consumer("refused"):
            raise RuntimeError("refused by the test")
        if config.durable_name == self.subjects.tick_consumer("slow"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.slow_cancelled.set()
                raise
        await super().ensure_consumer(stream, config)


async def test_start_is_all_or_nothing(
    nats_server: ServerInfo, subjects: Subjects, store: Store
) -> None:
    bus = _Refusing(subjects)
    await bus.connect(nats_server.client_url)
    scheduler = Scheduler(bus, runs=store.runs)
    scheduler.register(Counter("slow"))
    scheduler.register(Counter("refused"))
    try:
        with pytest.raises(RuntimeError, match="refused by the test"):
            await scheduler.start()
        async with asyncio.timeout(5):
            await bus.slow_cancelled.wait()
        assert not scheduler.running
    finally:
        await scheduler.stop()
        await bus.close()


async def test_skipped_and_dead_letter_counts_survive_a_restart(bus: Bus, store: Store) -> None:
    first = Scheduler(bus, runs=store.runs, process="first")
    first.register(OnJob())
    await first.start()
    # Undecodable: dead-lettered at once, and recorded so.
    await bus.js.publish(bus.subjects.event("job.bad"), b"{not json")
    await wait_for(lambda: first.workers()[0].dead_letter_count == 1)
    await first.stop()
    again = Scheduler(bus, runs=store.runs, process="again")
    again.register(OnJob())
    await again.start()
    try:
        (info,) = again.workers()
        assert info.dead_letter_count == 1
        assert info.skipped_count == 0
    finally:
        await again.stop()


# --------------------------------------------------------------- poison input


async def test_a_deep_tick_is_dead_lettered_once_never_looped(
    bus: Bus, scheduler: Scheduler
) -> None:
    worker = Counter()
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.runs) == 1)  # the ticker's own tick
    s = bus.subjects
    await bus.js.publish(s.tick(worker.name), b'{"worker":' + b"[" * 2_000 + b"]" * 2_000 + b"}")
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 1)
    (letter,) = await dead_letters(bus, worker.name)
    assert "levels deep" in letter.reason and letter.attempts == 1
    info = await bus.js.consumer_info(s.ticks_stream, s.tick_consumer(worker.name))
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 2
    (worker_info,) = scheduler.workers()
    assert worker_info.last_error is not None and "levels deep" in worker_info.last_error


async def test_forged_ticks_are_dead_lettered_never_run(bus: Bus, scheduler: Scheduler) -> None:
    worker = Counter()
    spec = spec_of(worker)
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.runs) == 1)
    slot = spec.slot_at(time.time())
    s = bus.subjects
    other = Tick(
        worker="other", slot=slot, scheduled=spec.slot_start_dt(slot), interval=spec.interval
    )
    far = Tick(worker=worker.name, slot=2**70, scheduled=datetime.now(UTC), interval=spec.interval)
    ahead = Tick(
        worker=worker.name,
        slot=slot + 10,
        scheduled=spec.slot_start_dt(slot + 10),
        interval=spec.interval,
    )
    # The current slot again, under another id than its own: a second copy.
    again = Tick(
        worker=worker.name, slot=slot, scheduled=spec.slot_start_dt(slot), interval=spec.interval
    )
    for tick in (other, far, ahead):
        await bus.js.publish(
            s.tick(worker.name), encode(tick), headers={"Nats-Msg-Id": tick.msg_id}
        )
    await bus.js.publish(s.tick(worker.name), encode(again), headers={"Nats-Msg-Id": "x"})
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 4)
    assert [run[0] for run in worker.runs] == [slot]
    reasons = [letter.reason for letter in await dead_letters(bus, worker.name)]
    assert "names worker 'other'" in reasons[0]
    assert "out of range" in reasons[1]
    assert "intervals ahead" in reasons[2]
    assert "lacks its de-duplication id" in reasons[3]


async def test_an_event_over_the_size_limit_is_dead_lettered_with_a_truncated_copy(
    bus: Bus, scheduler: Scheduler
) -> None:
    bus.limits = BusLimits(max_event_size=64 * 1024)
    worker = OnJob()
    scheduler.register(worker)
    await scheduler.start()
    s = bus.subjects
    # Near the server's max_payload and not UTF-8: its base64 copy alone
    # would not fit in a NATS message.
    payload = b"\xff" * (bus.nc.max_payload - 1024)
    ack = await bus.js.publish(s.event("job.big"), payload)
    await bus.publish_event(Event(type="job.ok", source="test", id="ok"))
    await wait_for(lambda: worker.seen == ["ok"])
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 1)
    (letter,) = await dead_letters(bus, worker.name)
    assert "maximum event size (65536)" in letter.reason
    assert letter.truncated and letter.size == len(payload)
    assert (letter.stream, letter.stream_seq, letter.subject) == (
        s.events_stream,
        ack.seq,
        s.event("job.big"),
    )
    assert letter.payload_base64 is not None
    assert payload.startswith(base64.b64decode(letter.payload_base64))


async def test_publish_event_refuses_an_event_over_the_size_limit(bus: Bus) -> None:
    bus.limits = BusLimits(max_event_size=1024)
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    with pytest.raises(EventTooLargeError, match="maximum event size of 1024 bytes"):
        await bus.publish_event(Event(type="job.big", source="test", data={"s": "x" * 2_000}))
    with pytest.raises(EventTooLargeError):
        await bus.publish_events([Event(type="job.big", source="test", data={"s": "x" * 2_000})])
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.state.messages == 0


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot describe this error")


class Breaks:
    """Raises what the actor cannot describe: handling fails outside the run."""

    name = "breaks"
    interval = timedelta(0)
    subscriptions = ("job.*",)
    max_attempts = 3

    def __init__(self) -> None:
        self.attempts: list[tuple[int, float]] = []

    async def run(self, ctx: RunContext) -> None:
        self.attempts.append((ctx.attempt, time.monotonic()))
        raise _Unprintable


async def test_a_message_that_breaks_handling_backs_off_then_is_dead_lettered(
    bus: Bus, scheduler: Scheduler
) -> None:
    worker = Breaks()
    scheduler.register(worker)
    await scheduler.start()
    await bus.publish_event(Event(type="job.poison", source="test", id="p"))
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 1, within=20)
    assert [a for a, _ in worker.attempts] == [1, 2, 3]
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(worker.attempts)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9  # backoff, no tight loop
    (letter,) = await dead_letters(bus, worker.name)
    assert letter.reason.startswith("handling failed 3 times: RuntimeError")
    (info,) = scheduler.workers()
    assert info.error_count == 3
    assert info.last_error is not None and info.last_error.startswith("handling failed")


async def test_an_event_never_settled_is_dead_lettered_on_its_last_delivery_unrun(
    bus: Bus, scheduler: Scheduler
) -> None:
    worker = OnJob()
    spec = spec_of(worker)
    s = bus.subjects
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    # The consumer exactly as the actor declares it.
    config = ConsumerConfig(
        durable_name=s.event_consumer(worker.name),
        filter_subject=s.event("job.*"),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        max_ack_pending=4096,
        ack_wait=ack_wait_for(spec).total_seconds(),
        max_deliver=spec.max_attempts + UNSETTLED_MARGIN,
    )
    await bus.js.add_consumer(s.events_stream, config)
    await bus.publish_event(Event(type="job.kills", source="test", id="k"))
    # Processes that died mid-run, one after another: every delivery but
    # the last ended unsettled.
    sub = await bus.js.pull_subscribe_bind(config.durable_name or "", s.events_stream)
    for _ in range(spec.max_attempts + UNSETTLED_MARGIN - 1):
        (held,) = await sub.fetch(1, timeout=5)
        await held.nak()
    await sub.unsubscribe()

    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 1)
    assert worker.seen == []
    (letter,) = await dead_letters(bus, worker.name)
    assert letter.attempts == spec.max_attempts + UNSETTLED_MARGIN
    assert "without being settled" in letter.reason
