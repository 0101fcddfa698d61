"""The scheduler and its actors against a real nats-server and a real SQLite file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import nats
import nats.js.errors
import pytest
import pytest_asyncio

from ctrlplane.actors import RunContext, Scheduler, WorkerInfo, WorkerKind
from ctrlplane.actors.consumers import ConsumerCount, consumers_needed
from ctrlplane.actors.errors import TooManyConsumersError
from ctrlplane.actors.spec import spec_of
from ctrlplane.bus import Bus, ConsumerLimitError, Event, Tick, encode
from ctrlplane.bus.consumer import PullFeed
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.store import Outcome, Store
from tests.helpers import dead_letters, health_failed, wait_for


class Recorder:
    """A periodic worker that remembers the ticks it ran."""

    def __init__(self, name: str = "recorder", interval: float = 0.3) -> None:
        self.name = name
        self.interval = timedelta(seconds=interval)
        self.ticks: list[Tick] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        self.ticks.append(ctx.tick)


class EventRecorder:
    """An event-driven worker that remembers the events it ran."""

    interval = timedelta(0)

    def __init__(self, name: str = "on-health", subscriptions: tuple[str, ...] = ("health.*",)):
        self.name = name
        self.subscriptions = subscriptions
        self.events: list[Event] = []
        self.attempts: list[int] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.events.append(ctx.event)
        self.attempts.append(ctx.attempt)


@pytest_asyncio.fixture
async def scheduler(bus: Bus, store: Store) -> AsyncIterator[Scheduler]:
    s = Scheduler(bus, runs=store.runs, process="test-1")
    try:
        yield s
    finally:
        await s.stop(grace=timedelta(seconds=1))


async def test_periodic_worker_runs_once_per_slot(scheduler: Scheduler, store: Store) -> None:
    worker = Recorder(interval=0.2)
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.ticks) >= 5)
    await scheduler.stop()
    slots = [t.slot for t in worker.ticks]
    assert len(set(slots)) == len(slots), f"a slot ran twice: {slots}"
    runs = await store.runs.list(worker="recorder")
    await _assert_every_slot_ran_or_coalesced(store, "recorder", slots)
    assert len([r for r in runs if r.outcome is Outcome.OK]) == len(slots)
    assert {r.outcome for r in runs} <= {Outcome.OK, Outcome.SKIPPED}
    assert all(r.process == "test-1" for r in runs)


class Stalling(Recorder):
    """A periodic worker whose second run blocks the event loop for several
    intervals, as a loaded machine's scheduling or a blocking call does."""

    def __init__(self, interval: float, stall: float) -> None:
        super().__init__(interval=interval)
        self.stall = stall

    async def run(self, ctx: RunContext) -> None:
        await super().run(ctx)
        if len(self.ticks) == 2:
            time.sleep(self.stall)  # noqa: ASYNC251 - the stall is the point


async def test_a_stalled_loop_loses_no_slot(scheduler: Scheduler, store: Store) -> None:
    # The ticker wakes several slots late: every slot it passed over is
    # still published (and coalesced into the newest), none silently lost.
    worker = Stalling(interval=0.2, stall=1.0)
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: len(worker.ticks) >= 5)
    await scheduler.stop()
    slots = [t.slot for t in worker.ticks]
    assert len(set(slots)) == len(slots), f"a slot ran twice: {slots}"
    await _assert_every_slot_ran_or_coalesced(store, "recorder", slots)
    skipped = [r for r in await store.runs.list(worker="recorder") if r.outcome is Outcome.SKIPPED]
    assert skipped, "the stall passed over slots, which were to be coalesced"


async def _assert_every_slot_ran_or_coalesced(store: Store, worker: str, ran: list[int]) -> None:
    """No slot lost: between the first and last run, each slot either ran or
    was coalesced (a stale tick skipped because a newer one waited; a loaded
    machine may fall behind a 0.2 s interval), never both."""
    runs = await store.runs.list(worker=worker, limit=10_000)
    skipped = {
        int(r.trigger_ref.rsplit("/", 1)[1])
        for r in runs
        if r.outcome is Outcome.SKIPPED and r.trigger_ref is not None
    }
    assert not skipped & set(ran), f"a slot ran and was skipped: {sorted(skipped & set(ran))}"
    expected = set(range(min(ran), max(ran) + 1))
    lost = expected - set(ran) - skipped
    assert not lost, f"slots lost: {sorted(lost)} (ran {sorted(ran)}, coalesced {sorted(skipped)})"


async def test_two_schedulers_share_each_slot(
    nats_server: ServerInfo, subjects: Subjects, bus: Bus, store: Store
) -> None:
    other_bus = Bus(subjects)
    await other_bus.connect(nats_server.client_url)
    a, b = Recorder(interval=0.2), Recorder(interval=0.2)
    first = Scheduler(bus, runs=store.runs, process="p1")
    second = Scheduler(other_bus, runs=store.runs, process="p2")
    first.register(a)
    second.register(b)
    await asyncio.gather(first.start(), second.start())
    try:
        await wait_for(lambda: len(a.ticks) + len(b.ticks) >= 8)
    finally:
        await asyncio.gather(first.stop(), second.stop())
        await other_bus.close()
    slots = sorted(t.slot for t in a.ticks + b.ticks)
    assert len(set(slots)) == len(slots), f"a slot ran twice: {slots}"
    await _assert_every_slot_ran_or_coalesced(store, "recorder", slots)


class CronRecorder(Recorder):
    """A worker on a cron schedule: every second (croniter's sixth field)."""

    def __init__(self) -> None:
        super().__init__(name="cron-recorder")
        self.interval = timedelta(0)
        self.schedule = "* * * * * */1"
        self.timezone = "Europe/Berlin"


async def test_a_cron_worker_runs_once_per_occurrence_across_two_processes(
    nats_server: ServerInfo, subjects: Subjects, bus: Bus, store: Store
) -> None:
    other_bus = Bus(subjects)
    await other_bus.connect(nats_server.client_url)
    a, b = CronRecorder(), CronRecorder()
    first = Scheduler(bus, runs=store.runs, process="p1")
    second = Scheduler(other_bus, runs=store.runs, process="p2")
    first.register(a)
    second.register(b)
    await asyncio.gather(first.start(), second.start())
    try:
        await wait_for(lambda: len(a.ticks) + len(b.ticks) >= 5)
        (info,) = first.workers()
        assert (info.schedule, info.timezone) == ("* * * * * */1", "Europe/Berlin")
        assert info.kind is WorkerKind.PERIODIC and info.next_run is not None
    finally:
        await asyncio.gather(first.stop(), second.stop())
        await other_bus.close()
    ticks = a.ticks + b.ticks
    slots = sorted(t.slot for t in ticks)
    assert len(set(slots)) == len(slots), f"an occurrence ran twice: {slots}"
    # The slot is the occurrence's epoch second, and each tick says so.
    assert all(t.scheduled.timestamp() == t.slot for t in ticks)
    await _assert_every_slot_ran_or_coalesced(store, "cron-recorder", slots)


async def test_event_worker_reacts_to_plain_nats_client(
    scheduler: Scheduler, nats_server: ServerInfo, subjects: Subjects
) -> None:
    worker = EventRecorder()
    scheduler.register(worker)
    await scheduler.start()
    # Another service, with nothing of ours: a core publish and a JetStream one.
    nc = await nats.connect(nats_server.client_url)
    try:
        payload = {
            "specversion": "1.0",
            "id": "ext-1",
            "type": "health.failed",
            "source": "other-service",
            "time": "2026-11-27T10:00:00+01:00",
            "data": {"check": "http"},
        }
        await nc.publish(subjects.event("health.failed"), msgspec.json.encode(payload))
        payload["id"] = "ext-2"
        await nc.jetstream().publish(subjects.event("health.failed"), msgspec.json.encode(payload))
        # Not subscribed: must not arrive.
        await nc.publish(subjects.event("instance.drift"), msgspec.json.encode(payload))
        await nc.flush()
    finally:
        await nc.close()
    await wait_for(lambda: len(worker.events) >= 2)
    await asyncio.sleep(0.2)
    assert [e.id for e in worker.events] == ["ext-1", "ext-2"]
    assert worker.events[0].time == datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert worker.events[0].instance_id is None
    assert worker.events[0].data == {"check": "http"}


async def test_undecodable_event_goes_to_dlq_and_worker_goes_on(
    scheduler: Scheduler, bus: Bus
) -> None:
    worker = EventRecorder()
    scheduler.register(worker)
    await scheduler.start()
    await bus.nc.publish(bus.subjects.event("health.failed"), b"{not json")
    await bus.nc.publish(bus.subjects.event("health.failed"), b'{"type": "health.failed"}')
    await bus.nc.publish(bus.subjects.event("health.failed"), b"\xff\xfe")
    await bus.publish_event(health_failed())
    await wait_for(lambda: len(worker.events) == 1)
    letters = await dead_letters(bus, worker.name)
    assert len(letters) == 3
    assert "JSON" in letters[0].reason or "malformed" in letters[0].reason
    assert letters[0].payload == "{not json"
    assert "source" in letters[1].reason  # names the missing field
    assert letters[2].payload is None and letters[2].payload_base64 == "//4="
    assert all(letter.subject == bus.subjects.event("health.failed") for letter in letters)
    info = {w.name: w for w in scheduler.workers()}[worker.name]
    assert info.dead_letter_count == 3


class Flaky:
    """Fails ``failures`` times, then succeeds."""

    name = "flaky"
    interval = timedelta(0)
    subscriptions = ("job.*",)
    max_attempts = 2

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[int] = []

    async def run(self, ctx: RunContext) -> None:
        self.attempts.append(ctx.attempt)
        if len(self.attempts) <= self.failures:
            raise RuntimeError(f"boom {len(self.attempts)}")


async def test_failing_event_is_retried_then_dead_lettered(
    scheduler: Scheduler, bus: Bus, store: Store
) -> None:
    worker = Flaky(failures=5)
    scheduler.register(worker)
    await scheduler.start()
    await bus.publish_event(Event(type="job.created", source="test", id="job-1"))
    await wait_for(lambda: len(worker.attempts) == 2, within=10)
    await wait_for(lambda: scheduler.workers()[0].dead_letter_count == 1)
    assert worker.attempts == [1, 2]
    letters = await dead_letters(bus, "flaky")
    assert len(letters) == 1
    assert letters[0].reason == "gave up after 2 attempts: RuntimeError: boom 2"
    assert letters[0].attempts == 2
    runs = await store.runs.list(worker="flaky")
    # The last attempt's record says what became of the message, and why.
    assert [r.outcome for r in runs] == [Outcome.DEAD_LETTERED, Outcome.ERROR]
    assert runs[0].error == "gave up after 2 attempts: RuntimeError: boom 2"


async def test_failing_event_recovers_on_retry(scheduler: Scheduler, bus: Bus) -> None:
    worker = Flaky(failures=1)
    scheduler.register(worker)
    await scheduler.start()
    await bus.publish_event(Event(type="job.created", source="test"))
    await wait_for(lambda: len(worker.attempts) == 2, within=10)
    await wait_for(lambda: scheduler.workers()[0].last_error is None)
    assert scheduler.workers()[0].error_count == 1
    assert await dead_letters(bus, "flaky") == []


class Raiser:
    name = "raiser"
    interval = timedelta(milliseconds=200)

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, ctx: RunContext) -> None:
        self.calls += 1
        raise ValueError("disk on fire")


async def test_run_that_raises_is_recorded_published_and_runs_again(
    scheduler: Scheduler, bus: Bus, store: Store
) -> None:
    failures = EventRecorder("on-failed", ("worker.failed",))
    worker = Raiser()
    scheduler.register(worker)
    scheduler.register(failures)
    await scheduler.start()
    await wait_for(lambda: worker.calls >= 2 and len(failures.events) >= 2)
    info = {w.name: w for w in scheduler.workers()}["raiser"]
    assert info.last_error == "ValueError: disk on fire"
    assert info.error_count >= 2
    event = failures.events[0]
    assert event.source == "raiser"
    assert event.data["error"] == "ValueError: disk on fire"
    assert event.data["trigger"] == "tick"
    runs = await store.runs.list(worker="raiser")
    assert runs and all(r.outcome is Outcome.ERROR for r in runs)


class HugeRaiser:
    """Fails with an error text larger than any event may be."""

    name = "huge-raiser"
    interval = timedelta(days=1)

    async def run(self, ctx: RunContext) -> None:
        raise ValueError("x" * 1_000_000)


async def test_a_huge_error_is_clipped_where_it_is_published_and_stored(
    scheduler: Scheduler, store: Store
) -> None:
    failures = EventRecorder("on-failed", ("worker.failed",))
    scheduler.register(HugeRaiser())
    scheduler.register(failures)
    await scheduler.start()
    await wait_for(lambda: len(failures.events) == 1)
    error = failures.events[0].data["error"]
    assert error.startswith("ValueError: xxx") and error.endswith(" characters]")
    assert len(error) < 5_000
    (run,) = await store.runs.list(worker="huge-raiser")
    assert run.error is not None and len(run.error) < 5_000


class Sleeper:
    """Sleeps ``seconds`` per run; may ignore cancellation."""

    def __init__(
        self,
        name: str = "sleeper",
        seconds: float = 30,
        *,
        interval: float = 3600,
        timeout: float | None = None,
        stubborn: bool = False,
    ) -> None:
        self.name = name
        self.interval = timedelta(seconds=interval)
        if timeout is not None:
            self.timeout = timedelta(seconds=timeout)
        self.seconds = seconds
        self.stubborn = stubborn
        self.started = asyncio.Event()
        self.runs: list[RunContext] = []

    async def run(self, ctx: RunContext) -> None:
        self.runs.append(ctx)
        self.started.set()
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            try:
                await asyncio.sleep(deadline - time.monotonic())
            except asyncio.CancelledError:
                if not self.stubborn:
                    raise


async def test_run_past_timeout_is_cancelled_and_recorded(
    scheduler: Scheduler, store: Store
) -> None:
    worker = Sleeper(seconds=30, timeout=0.3)
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: scheduler.workers()[0].error_count == 1)
    info = scheduler.workers()[0]
    assert info.last_error is not None and "timed out" in info.last_error
    assert not info.running
    runs = await store.runs.list(worker="sleeper")
    assert [r.outcome for r in runs] == [Outcome.TIMEOUT]


async def test_stop_returns_within_grace_even_if_a_run_ignores_cancellation(
    bus: Bus, store: Store
) -> None:
    scheduler = Scheduler(bus, runs=store.runs)
    # Stubborn for 3 s: long past grace + 1 s, short enough not to outlive the test run.
    worker = Sleeper(seconds=3, timeout=60, stubborn=True)
    scheduler.register(worker)
    await scheduler.start()
    async with asyncio.timeout(10):
        await worker.started.wait()
    began = time.monotonic()
    await scheduler.stop(grace=timedelta(seconds=0.5))
    elapsed = time.monotonic() - began
    assert elapsed < 1.5, f"stop took {elapsed:.2f}s"


async def test_stop_hands_an_unfinished_tick_to_another_process_at_once(
    nats_server: ServerInfo, subjects: Subjects, bus: Bus, store: Store
) -> None:
    first = Scheduler(bus, runs=store.runs, process="p1")
    slow = Sleeper(seconds=30, timeout=60)
    first.register(slow)
    await first.start()
    async with asyncio.timeout(10):
        await slow.started.wait()
    tick = slow.runs[0].tick
    await first.stop(grace=timedelta(seconds=0.2))

    other = Bus(subjects)
    await other.connect(nats_server.client_url)
    second = Scheduler(other, runs=store.runs, process="p2")
    fast = Sleeper(seconds=0, timeout=60)
    second.register(fast)
    began = time.monotonic()
    await second.start()
    try:
        # Well inside the 30 s ack_wait: the tick was handed back, not timed out.
        async with asyncio.timeout(5):
            await fast.started.wait()
    finally:
        await second.stop()
        await other.close()
    assert time.monotonic() - began < 5
    assert fast.runs[0].tick == tick
    assert fast.runs[0].attempt == 2
    runs = await store.runs.list(worker="sleeper")
    assert sorted(r.outcome for r in runs) == sorted([Outcome.CANCELLED, Outcome.OK])


class Gate:
    """A periodic worker whose first run waits for the test to open the gate."""

    name = "gate"
    interval = timedelta(hours=1)

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.ticks: list[Tick] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        self.ticks.append(ctx.tick)
        self.entered.set()
        await self.gate.wait()


async def test_stale_ticks_coalesce_into_one_run(
    scheduler: Scheduler, bus: Bus, store: Store
) -> None:
    worker = Gate()
    scheduler.register(worker)
    await scheduler.start()
    async with asyncio.timeout(10):
        await worker.entered.wait()
    current = worker.ticks[0]
    # An outage left five old slots queued behind the running one.
    for back in range(5, 0, -1):
        slot = current.slot - 10 * back
        await bus.publish_tick(
            Tick(
                worker="gate",
                slot=slot,
                scheduled=current.scheduled - timedelta(hours=10 * back),
                interval=current.interval,
            )
        )
    worker.gate.set()
    await wait_for(lambda: scheduler.workers()[0].skipped_count == 4 and len(worker.ticks) == 2)
    await asyncio.sleep(0.3)
    assert len(worker.ticks) == 2
    assert worker.ticks[1].slot == current.slot - 10  # the newest stale one
    runs = await store.runs.list(worker="gate")
    assert sorted(r.outcome for r in runs).count(Outcome.SKIPPED) == 4


async def test_duplicate_tick_for_a_slot_is_dropped(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=5))
    tick = Tick(worker="w", slot=7, scheduled=datetime.now(UTC), interval=timedelta(minutes=1))
    assert await bus.publish_tick(tick) is True
    assert await bus.publish_tick(tick) is False


class Once:
    name = "migrate"
    interval = timedelta(0)

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, ctx: RunContext) -> None:
        self.calls += 1


async def test_zero_interval_worker_without_subscriptions_runs_once(
    scheduler: Scheduler, store: Store
) -> None:
    worker = Once()
    scheduler.register(worker)
    await scheduler.start()
    await wait_for(lambda: scheduler.workers()[0].run_count == 1)
    await asyncio.sleep(0.3)
    assert worker.calls == 1
    info = scheduler.workers()[0]
    assert info.kind is WorkerKind.ONCE
    runs = await store.runs.list(worker="migrate")
    assert [(r.trigger.value, r.outcome) for r in runs] == [("once", Outcome.OK)]


async def test_workers_reports_what_the_issue_names(scheduler: Scheduler) -> None:
    scheduler.register(Recorder(interval=60))
    scheduler.register(EventRecorder())
    await scheduler.start()
    infos = scheduler.workers()
    assert all(isinstance(i, WorkerInfo) for i in infos)
    periodic, event = infos
    assert (periodic.kind, event.kind) == (WorkerKind.PERIODIC, WorkerKind.EVENT)
    assert periodic.interval == timedelta(seconds=60)
    assert periodic.next_run is not None
    assert datetime.now(UTC) < periodic.next_run <= datetime.now(UTC) + timedelta(seconds=60)
    assert event.next_run is None
    assert event.subscriptions == ("health.*",)
    # The first run happens at start, in the current slot.
    await wait_for(lambda: scheduler.workers()[0].run_count == 1)
    assert scheduler.workers()[0].last_run is not None


@pytest.mark.parametrize(
    ("name", "interval", "problem"),
    [
        ("Bad Name", timedelta(seconds=1), "invalid name"),
        ("a.b", timedelta(seconds=1), "invalid name"),
        ("", timedelta(seconds=1), "invalid name"),
        ("x" * 65, timedelta(seconds=1), "invalid name"),
        ("ok", timedelta(seconds=-1), "negative interval"),
        ("ok", timedelta(milliseconds=10), "below the 100 ms minimum"),
    ],
)
def test_register_rejects_invalid_workers(name: str, interval: timedelta, problem: str) -> None:
    worker = Recorder(name)
    worker.interval = interval
    with pytest.raises(ValueError, match=problem):
        Scheduler().register(worker)


def test_register_rejects_duplicates_and_bad_attributes() -> None:
    s = Scheduler()
    s.register(Recorder("one"))
    with pytest.raises(ValueError, match="already registered"):
        s.register(Recorder("one"))
    bad = EventRecorder("subs", ("health..failed",))
    with pytest.raises(ValueError, match="invalid subscription"):
        s.register(bad)
    no_run = Recorder("norun")
    no_run.run = None  # type: ignore[assignment, method-assign]
    with pytest.raises(ValueError, match="run"):
        s.register(no_run)


async def test_start_without_a_bus_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="connect the bus first"):
        await Scheduler().start()


async def test_event_encodes_as_plain_json(bus: Bus) -> None:
    event = Event(type="health.failed", source="t", instance_id="i-1", data={"a": 1})
    decoded = msgspec.json.decode(encode(event))
    assert decoded["type"] == "health.failed"
    assert decoded["time"].endswith("Z")
    assert decoded["instanceid"] == "i-1"
    assert (decoded["specversion"], decoded["datacontenttype"]) == ("1.0", "application/json")


async def test_a_crash_in_an_actor_loop_restarts_it_and_work_goes_on(
    scheduler: Scheduler, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault injected into the actor's own machinery (not the worker): the
    # intake loops crash on their first start, as a bug there would.
    real_run = PullFeed.run
    calls = 0

    async def broken_once(self: PullFeed) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("bug in the intake loop")
        await real_run(self)

    monkeypatch.setattr(PullFeed, "run", broken_once)
    worker = EventRecorder()
    other = Recorder(interval=0.2)
    scheduler.register(worker)
    scheduler.register(other)
    await scheduler.start()
    await bus.publish_event(health_failed())
    await wait_for(lambda: len(worker.events) == 1 and len(other.ticks) >= 2)
    assert calls > 2


async def test_prefetch_bounds_what_one_process_holds(bus: Bus, store: Store) -> None:
    class Slow(EventRecorder):
        prefetch = 2

        async def run(self, ctx: RunContext) -> None:
            await super().run(ctx)
            await asyncio.sleep(30)

    scheduler = Scheduler(bus, runs=store.runs)
    scheduler.register(Slow())
    await scheduler.start()
    try:
        for i in range(5):
            await bus.publish_event(health_failed(source="t", id=f"e{i}"))
        await wait_for(lambda: scheduler.workers()[0].running)
        await asyncio.sleep(0.3)
        info = await bus.js.consumer_info(bus.subjects.events_stream, "events-on-health")
        assert info.num_ack_pending == 2  # one running, one waiting; three left for others
        assert info.num_pending == 3
    finally:
        await scheduler.stop(grace=timedelta(seconds=0.1))


async def test_workers_that_need_more_consumers_than_the_limit_are_refused(bus: Bus) -> None:
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=2)
    scheduler = Scheduler(bus, process="test-1")
    for i in range(3):
        scheduler.register(Recorder(f"r{i}", interval=60))
    scheduler.register(EventRecorder())
    with pytest.raises(TooManyConsumersError, match=r"max_consumers \(2\)") as caught:
        await scheduler.start()
    assert (caught.value.stream, caught.value.needed) == (bus.subjects.ticks_stream, 3)
    # Refused before anything was made.
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.stream_info(bus.subjects.ticks_stream)


async def test_consumers_of_other_processes_count_against_the_stream_limit(
    bus: Bus, nats_server: ServerInfo
) -> None:
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=3)
    first = Scheduler(bus, process="test-1")
    for i in range(2):
        first.register(Recorder(f"a{i}", interval=60))
    await first.start()
    other = Bus(bus.subjects, name="other", limits=bus.limits)
    await other.connect(nats_server.client_url)
    second = Scheduler(other, process="test-2")
    for i in range(2):
        second.register(Recorder(f"b{i}", interval=60))
    try:
        with pytest.raises(ConsumerLimitError, match="max_consumers"):
            await second.start()
    finally:
        await first.stop(grace=timedelta(seconds=1))
        await other.close()


def test_consumers_needed_counts_one_per_worker_and_stream() -> None:
    specs = [
        spec_of(Recorder("p", interval=1)),
        spec_of(EventRecorder()),
        spec_of(BothWays()),
    ]
    assert consumers_needed(specs) == ConsumerCount(ticks=2, events=2, replays=2)


class BothWays:
    """A periodic worker that also reacts to events: a consumer on each stream."""

    name = "both"
    interval = timedelta(seconds=5)
    subscriptions = ("instance.*",)

    async def run(self, ctx: RunContext) -> None:
        return None
