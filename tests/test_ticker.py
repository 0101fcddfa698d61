"""The ticker against a real nats-server, its clock injected: which slots it publishes."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from nats.js.api import AckPolicy, ConsumerConfig

from ctrlplane.actors.spec import WorkerSpec, spec_of
from ctrlplane.actors.ticker import CATCH_UP_SLOTS, Ticker
from ctrlplane.bus import Bus, Tick
from ctrlplane.bus.codec import decode_tick
from tests.helpers import wait_for


class Periodic:
    name = "periodic"

    def __init__(self, interval: timedelta = timedelta(seconds=1)) -> None:
        self.interval = interval

    async def run(self, ctx: object) -> None:
        return None


class Cron:
    name = "cron"
    interval = timedelta(0)

    def __init__(self, schedule: str, timezone: str | None = None) -> None:
        self.schedule = schedule
        self.timezone = timezone

    async def run(self, ctx: object) -> None:
        return None


class Clock:
    """Real time plus a jump the test sets: the ticker's sleeps stay short
    (they are computed from this clock) while whole slots go by."""

    def __init__(self, start: float | None = None) -> None:
        self.skew = 0.0 if start is None else start - time.time()

    def __call__(self) -> float:
        return time.time() + self.skew


async def _published(bus: Bus, spec: WorkerSpec, count: int) -> list[Tick]:
    """The ticks in the stream for ``spec``'s worker (all of them), once there are ``count``."""
    s = bus.subjects
    await bus.js.add_consumer(
        s.ticks_stream,
        ConsumerConfig(
            durable_name=f"read-{spec.name}",
            filter_subject=s.tick(spec.name),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )

    async def pending() -> bool:
        info = await bus.js.consumer_info(s.ticks_stream, f"read-{spec.name}")
        return bool(info.num_pending >= count)

    try:
        await wait_for(pending)
    except AssertionError:
        info = await bus.js.consumer_info(s.ticks_stream, f"read-{spec.name}")
        raise AssertionError(f"{info}") from None
    info = await bus.js.consumer_info(s.ticks_stream, f"read-{spec.name}")
    sub = await bus.js.pull_subscribe_bind(f"read-{spec.name}", s.ticks_stream)
    try:
        msgs = await sub.fetch(info.num_pending, timeout=5)
        return [decode_tick(m.data, m.subject) for m in msgs]
    finally:
        await sub.unsubscribe()


async def test_a_late_wake_publishes_every_slot_passed_over(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    spec = spec_of(Periodic(timedelta(seconds=1)))
    clock = Clock()
    ticker = Ticker(bus, [spec], process="p1", clock=clock)
    ticker.start()
    try:
        await wait_for(lambda: ticker.published >= 1)
        # The loop wakes four slots late (a blocked loop, a loaded machine).
        clock.skew += 4.0
        jumped = spec.slot_at(clock())
        await wait_for(lambda: ticker.published >= 5)
    finally:
        await ticker.stop()
    ticks = await _published(bus, spec, 5)
    slots = [t.slot for t in ticks]
    # In order, none missing: the consumer coalesces the stale ones.
    assert len(slots) >= 5 and slots == list(range(slots[0], slots[0] + len(slots)))
    assert slots[-1] >= jumped
    assert ticker.dropped == 0
    assert all(spec.tick_problem(t, clock()) is None for t in ticks)


async def test_a_jump_past_the_catch_up_bound_publishes_the_latest_slots(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    spec = spec_of(Periodic(timedelta(milliseconds=100)))
    clock = Clock()
    ticker = Ticker(bus, [spec], process="p1", clock=clock)
    ticker.start()
    try:
        await wait_for(lambda: ticker.published >= 1)
        before = spec.slot_at(clock()) + 1
        published = ticker.published
        clock.skew += 0.1 * (CATCH_UP_SLOTS + 20)
        jumped = spec.slot_at(clock())
        await wait_for(lambda: ticker.published >= published + CATCH_UP_SLOTS)
    finally:
        await ticker.stop()
    # The catch-up: the slot the loop woke in and the 11 before it, in order.
    slots = [t.slot for t in await _published(bus, spec, CATCH_UP_SLOTS)]
    caught_up = [s for s in slots if s > before][:CATCH_UP_SLOTS]
    assert caught_up == list(range(caught_up[0], caught_up[0] + CATCH_UP_SLOTS))
    # The 20 oldest slots beyond the bound were dropped, counted (and logged) once.
    assert caught_up[0] >= jumped - CATCH_UP_SLOTS + 1 > before + 1
    assert ticker.dropped == 1


BERLIN = ZoneInfo("Europe/Berlin")


async def test_a_cron_worker_is_ticked_at_its_occurrences(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    spec = spec_of(Cron("* * * * * */2"))
    clock = Clock()
    ticker = Ticker(bus, [spec], process="p1", clock=clock)
    ticker.start()
    try:
        await wait_for(lambda: ticker.published >= 3)
    finally:
        await ticker.stop()
    ticks = await _published(bus, spec, 3)
    slots = [t.slot for t in ticks]
    assert all(s % 2 == 0 for s in slots), slots
    assert [b - a for a, b in itertools.pairwise(slots)] == [2, 2]
    for t in ticks:
        assert t.scheduled == datetime.fromtimestamp(t.slot, UTC)
        assert t.interval == timedelta(seconds=2)
        assert spec.tick_problem(t, clock()) is None


async def test_a_cron_occurrence_long_past_is_not_run_at_start(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    # Daily at 02:30 in Berlin; the process starts at 09:00: nothing is due.
    spec = spec_of(Cron("30 2 * * *", "Europe/Berlin"))
    start = _berlin(2026, 10, 24, 9, 0)
    ticker = Ticker(bus, [spec], process="p1", clock=Clock(start))
    ticker.start()
    try:
        run = ticker.next_run("cron")
        assert run is not None and run.timestamp() == _berlin(2026, 10, 25, 2, 30)
    finally:
        await ticker.stop()
    assert ticker.published == 0
    info = await bus.js.stream_info(bus.subjects.ticks_stream)
    assert info.state.messages == 0


async def test_a_start_just_after_a_cron_occurrence_still_runs_it(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    spec = spec_of(Cron("30 2 * * *", "Europe/Berlin"))
    # A restart 20 s after 02:30 (a deploy) must not lose the 02:30 run.
    start = _berlin(2026, 10, 24, 2, 30, 20)
    clock = Clock(start)
    ticker = Ticker(bus, [spec], process="p1", clock=clock)
    ticker.start()
    try:
        await wait_for(lambda: ticker.published == 1)
    finally:
        await ticker.stop()
    (tick,) = await _published(bus, spec, 1)
    assert tick.scheduled.timestamp() == _berlin(2026, 10, 24, 2, 30)
    assert tick.interval == timedelta(hours=24)
    # The next occurrence is on the fall-back night, 25 hours later in real time.
    assert spec.slot_length(tick.slot + 86_400) == timedelta(hours=1)
    assert spec.tick_problem(tick, clock()) is None


def _berlin(*local: int, fold: int = 0) -> float:
    """Epoch seconds of a Berlin wall-clock time (``fold=1``: its second pass)."""
    return datetime(*local, tzinfo=BERLIN, fold=fold).timestamp()  # type: ignore[arg-type,misc]


def test_next_run_follows_the_cron_across_dst_with_an_injected_clock() -> None:
    spec = spec_of(Cron("30 2 * * *", "Europe/Berlin"))
    now = [0.0]
    ticker = Ticker(None, [spec], process="p1", clock=lambda: now[0])  # type: ignore[arg-type]

    def next_run_at(t: float) -> float:
        now[0] = t
        run = ticker.next_run("cron")
        assert run is not None
        return run.timestamp()

    # Spring forward (29 March 2026): 02:30 does not exist; it runs at 03:00.
    assert next_run_at(_berlin(2026, 3, 29, 1, 0)) == _berlin(2026, 3, 29, 3, 0)
    assert next_run_at(_berlin(2026, 3, 29, 3, 30)) == _berlin(2026, 3, 30, 2, 30)
    # Fall back (25 October 2026): 02:30 happens twice, and runs twice.
    summer, winter = _berlin(2026, 10, 25, 2, 30), _berlin(2026, 10, 25, 2, 30, fold=1)
    assert winter - summer == 3600
    assert next_run_at(_berlin(2026, 10, 25, 1, 0)) == summer
    assert next_run_at(summer + 60) == winter
    assert next_run_at(winter + 60) == _berlin(2026, 10, 26, 2, 30)
