"""The bus: subjects, codec, streams, and publishing through a broker restart."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DiscardPolicy

from ctrlplane.bus import (
    Bus,
    BusError,
    BusLimits,
    ConsumerLimitError,
    DecodeError,
    Event,
    InvalidEventError,
    PublishError,
    ReplicasError,
    Subjects,
    Tick,
    decode_event,
    encode,
)
from ctrlplane.bus.codec import MAX_TICK_SIZE, decode_event_msg, decode_tick, stream_position
from ctrlplane.bus.connection import TICKS_MAX_BYTES
from ctrlplane.bus.server import EmbeddedServer


def test_subjects_derive_everything_from_the_prefix() -> None:
    s = Subjects("acme.prod")
    assert s.tick("gc") == "acme.prod.tick.gc"
    assert s.tick("telemetry", "node-a") == "acme.prod.tick.telemetry.node-a"
    assert s.all_ticks == "acme.prod.tick.>"
    assert (s.tick_consumer("gc"), s.tick_consumer("gc", "node-a")) == ("tick-gc", "tick-gc@node-a")
    assert s.event_consumer("r", "node-a") == "events-r@node-a"
    assert s.event("health.failed") == "acme.prod.events.health.failed"
    assert s.dlq("gc") == "acme.prod.dlq.gc"
    assert s.api("workers") == "acme.prod.api.v1.workers"
    assert s.api("workers", "v2") == "acme.prod.api.v2.workers"
    assert s.all_api == "acme.prod.api.>"
    assert s.internal("node.a.lifecycle") == "acme.prod.internal.node.a.lifecycle"
    assert (s.ticks_stream, s.events_stream, s.dlq_stream) == (
        "ACME_PROD_TICKS",
        "ACME_PROD_EVENTS",
        "ACME_PROD_DLQ",
    )
    assert s.event_type_of("acme.prod.events.instance.drift") == "instance.drift"


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "a b", "a.>"])
def test_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        Subjects(prefix)


def test_event_round_trips_and_bad_payloads_say_why() -> None:
    event = Event(type="thing.moved", source="reconciler", instance_id="i-1", data={"n": 1})
    assert decode_event(encode(event)) == event
    with pytest.raises(DecodeError, match="type"):
        decode_event(b'{"id": "x", "source": "s"}', "subj")
    with pytest.raises(DecodeError, match="subj"):
        decode_event(b"[1, 2", "subj")


def test_a_time_without_a_utc_offset_is_refused_and_the_reason_says_so() -> None:
    naive = b'{"id": "e1", "type": "a.b", "source": "s", "time": "2026-11-30T06:34:33"}'
    with pytest.raises(DecodeError, match="no UTC offset") as caught:
        decode_event(naive, "subj")
    assert caught.value.subject == "subj"
    assert "$.time" in caught.value.reason
    aware = decode_event(naive.replace(b':33"', b':33+02:00"'))
    assert aware.time == datetime(2026, 11, 30, 4, 34, 33, tzinfo=UTC)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("field", ["data", "unknown"])
def test_a_deeply_nested_event_is_a_decode_error(field: str) -> None:
    deep = '{"x": ' + _nested(2000) + "}"
    payload = f'{{"type": "a.b", "source": "s", "{field}": {deep}}}'
    # Refused from the raw bytes: msgspec never recurses into it.
    with pytest.raises(DecodeError, match="levels deep"):
        decode_event(payload.encode(), "subj")


def test_a_deeply_nested_tick_is_a_decode_error() -> None:
    payload = '{"worker": "gc", "extra": ' + _nested(2000) + ', "slot": 1}'
    with pytest.raises(DecodeError, match="levels deep"):
        decode_tick(payload.encode(), "subj")


def test_a_missing_id_and_time_come_from_the_stream_position() -> None:
    bare = b'{"type": "a.b", "source": "billing"}'
    stored = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = decode_event(bare, stream="EVENTS", stream_seq=7, stream_time=stored)
    again = decode_event(bare, stream="EVENTS", stream_seq=7, stream_time=stored)
    assert first == again
    assert (first.id, first.time) == ("EVENTS-7", stored)
    # What the payload says wins over the stream.
    full = decode_event(
        b'{"id": "x1", "type": "a.b", "source": "s", "time": "2026-01-01T00:00:00Z"}',
        stream="EVENTS",
        stream_seq=7,
        stream_time=stored,
    )
    assert (full.id, full.time) == ("x1", datetime(2026, 1, 1, tzinfo=UTC))
    # No stream position (core NATS): a fresh id and the current time, as before.
    before = datetime.now(UTC)
    loose = decode_event(bare)
    assert loose.id != decode_event(bare).id
    assert loose.time >= before


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.abc", "$JS.ACK.S.C.1.x.1.1.0", "$JS.ACK.S.C.1.1.1.notatime.0"]
)
def test_stream_position_of_a_message_outside_a_stream_is_unknown(reply: str) -> None:
    msg = Msg(_client=None, subject="x.y", reply=reply, data=b'{"type": "a", "source": "s"}')  # type: ignore[arg-type]
    assert stream_position(msg) == (None, None, None)
    assert len(decode_event_msg(msg, events_head=None).id) == 32


def test_an_explicit_null_is_absent() -> None:
    # CloudEvents: null means unset. The previous envelope then derives the
    # id, a CloudEvent is refused for lacking one.
    legacy = decode_event(b'{"id": null, "type": "a.b", "source": "s", "data": null}')
    assert len(legacy.id) == 32 and legacy.data == {}
    with pytest.raises(DecodeError, match="id is required"):
        decode_event(
            b'{"specversion": "1.0", "id": null, "type": "a.b", "source": "s",'
            b' "time": "2026-01-01T00:00:00Z"}'
        )


async def test_an_event_without_id_or_time_is_the_same_on_every_delivery(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    stream = bus.subjects.events_stream
    payload = json.dumps({"type": "x.y", "source": "other-service"}).encode()
    ack = await bus.js.publish(bus.subjects.event("x.y"), payload)
    one = await bus.js.pull_subscribe(bus.subjects.all_events, durable="one", stream=stream)
    two = await bus.js.pull_subscribe(bus.subjects.all_events, durable="two", stream=stream)
    [first] = await one.fetch(1, timeout=10)
    await first.nak()
    [redelivered] = await one.fetch(1, timeout=10)
    [other] = await two.fetch(1, timeout=10)
    assert redelivered.metadata.num_delivered == 2
    head = bus.subjects.event("")
    events = [decode_event_msg(m, events_head=head) for m in (first, redelivered, other)]
    assert events[0] == events[1] == events[2]
    assert events[0].id == f"{stream}-{ack.seq}"
    assert events[0].time == first.metadata.timestamp
    assert abs(events[0].time - datetime.now(UTC)) < timedelta(minutes=1)


async def test_publish_waits_out_a_broker_restart_and_loses_nothing(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats")
    info = await server.start()
    port = int(info.url.rsplit(":", 1)[1])
    bus = Bus(Subjects("restart"), publish_timeout=timedelta(seconds=20))
    await bus.connect(info.client_url)
    try:
        await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
        before = Event(type="t.before", source="test")
        await bus.publish_event(before)
        await server.stop()
        # Published while the broker is away: waits, retries, lands.
        during = asyncio.create_task(bus.publish_event(Event(type="t.during", source="test")))
        await asyncio.sleep(0.5)
        assert not during.done()
        server = EmbeddedServer(tmp_path / "nats", port=port)
        await server.start()
        async with asyncio.timeout(20):
            await during
        sub = await bus.js.pull_subscribe(
            bus.subjects.all_events, stream=bus.subjects.events_stream
        )
        msgs = await sub.fetch(10, timeout=2)
        types = [msgspec.json.decode(m.data, type=Event).type for m in msgs]
        assert types == ["t.before", "t.during"]
    finally:
        await bus.close()
        await server.stop()


async def test_same_event_published_twice_is_stored_once(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    event = Event(type="x.y", source="test")
    first = await bus.publish_event(event)
    second = await bus.publish_event(event)
    assert first == second
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.state.messages == 1


async def test_streams_only_widen_their_duplicate_window(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(hours=2))
    await bus.ensure_streams(duplicate_window=timedelta(minutes=3))
    info = await bus.js.stream_info(bus.subjects.ticks_stream)
    assert info.config.duplicate_window == timedelta(hours=2).total_seconds()


async def test_a_tick_stream_made_for_cluster_ticks_only_is_widened_to_node_ticks(
    bus: Bus,
) -> None:
    # A stream an older version created took tick.* only: a node's tick
    # (tick.<worker>.<node>) would have no stream to land in.
    s = bus.subjects
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    info = await bus.js.stream_info(s.ticks_stream)
    info.config.subjects = [f"{s.prefix}.tick.*"]
    await bus.js.update_stream(info.config)
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    assert (await bus.js.stream_info(s.ticks_stream)).config.subjects == [s.all_ticks]
    tick = Tick(
        worker="w", slot=1, scheduled=datetime.now(UTC), interval=timedelta(minutes=1), node="n"
    )
    assert await bus.publish_tick(tick) is True
    assert await bus.publish_tick(tick) is False  # one per node and slot
    assert await bus.publish_tick(msgspec.structs.replace(tick, node="m")) is True
    state = await bus.js.stream_info(s.ticks_stream, subjects_filter=s.all_ticks)
    assert state.state.subjects == {s.tick("w", "n"): 1, s.tick("w", "m"): 1}


async def test_event_retention_follows_the_latest_setting(bus: Bus) -> None:
    window = timedelta(minutes=2)
    await bus.ensure_streams(duplicate_window=window, events_max_age=timedelta(days=7))
    await bus.ensure_streams(duplicate_window=window, events_max_age=timedelta(days=1))
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.config.max_age == timedelta(days=1).total_seconds()


async def test_events_and_dead_letters_are_bounded_by_bytes_and_age(bus: Bus) -> None:
    window = timedelta(minutes=2)
    await bus.ensure_streams(duplicate_window=window)
    s = bus.subjects
    events = await bus.js.stream_info(s.events_stream)
    dlq = await bus.js.stream_info(s.dlq_stream)
    assert events.config.max_bytes == bus.limits.events_max_bytes
    assert dlq.config.max_bytes == bus.limits.dlq_max_bytes
    assert dlq.config.max_age == timedelta(days=30).total_seconds()
    # The operator's latest setting wins, and past it the oldest go.
    bus.limits = BusLimits(
        events_max_bytes=2 * 1024**2, dlq_max_bytes=3 * 1024**2, dlq_max_age=timedelta(days=2)
    )
    await bus.ensure_streams(duplicate_window=window)
    events = await bus.js.stream_info(s.events_stream)
    dlq = await bus.js.stream_info(s.dlq_stream)
    assert (events.config.max_bytes, dlq.config.max_bytes) == (2 * 1024**2, 3 * 1024**2)
    assert dlq.config.max_age == timedelta(days=2).total_seconds()
    assert events.config.discard == dlq.config.discard == DiscardPolicy.OLD
    filler = Event(type="a.b", source="s", data={"s": "x" * 200_000})
    for i in range(20):
        await bus.publish_event(Event(type="a.b", source="s", id=str(i), data=filler.data))
    events = await bus.js.stream_info(s.events_stream)
    assert events.state.bytes <= 2 * 1024**2 and events.state.first_seq > 1


async def test_using_the_bus_before_connect_says_what_to_do() -> None:
    with pytest.raises(Exception, match="connect the bus first"):
        await Bus().publish_event(Event(type="a", source="b"))


@pytest.mark.parametrize("event_type", ["", "has space", "health.*", "a..b", "a.>"])
async def test_an_event_type_that_cannot_be_a_subject_is_refused(bus: Bus, event_type: str) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    with pytest.raises(InvalidEventError, match="not valid"):
        await bus.publish_event(Event(type=event_type, source="test"))
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.state.messages == 0


async def test_a_batch_with_an_invalid_type_publishes_nothing(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    events = [Event(type="x.ok", source="test"), Event(type="x.*", source="test")]
    with pytest.raises(InvalidEventError):
        await bus.publish_events(events)
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.state.messages == 0


async def test_events_published_before_their_stream_exists_land_once(bus: Bus) -> None:
    events = [Event(type=f"x.n{i % 3}", source="test") for i in range(300)]
    # No stream yet: every fast publish comes back unanswered and is retried
    # one by one until the stream appears.
    publishing = asyncio.create_task(bus.publish_events(events))
    await asyncio.sleep(0.3)
    assert not publishing.done()
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    async with asyncio.timeout(20):
        await publishing
    info = await bus.js.stream_info(bus.subjects.events_stream)
    assert info.state.messages == 300


async def test_events_that_never_land_raise_publish_error(bus: Bus) -> None:
    bus.publish_timeout = timedelta(milliseconds=300)
    with pytest.raises(PublishError):
        await bus.publish_events([Event(type="x.y", source="test") for _ in range(5)])


async def test_one_id_from_two_sources_is_two_events(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    a = await bus.publish_event(Event(type="job.done", source="svc-a", id="same"))
    b = await bus.publish_event(Event(type="job.done", source="svc-b", id="same"))
    again = await bus.publish_event(Event(type="job.done", source="svc-a", id="same"))
    assert a != b
    assert again == a  # a retry of one event is stored once


async def test_a_stream_limit_jetstream_cannot_reserve_names_the_setting(bus: Bus) -> None:
    bus.limits = BusLimits(events_max_bytes=2**50)
    with pytest.raises(BusError, match="lower events_max_bytes / dlq_max_bytes"):
        await bus.ensure_streams(duplicate_window=timedelta(minutes=2))


async def test_the_tick_stream_is_bounded_by_bytes_and_tick_size(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    s = bus.subjects
    info = await bus.js.stream_info(s.ticks_stream)
    assert info.config.max_bytes == TICKS_MAX_BYTES
    assert info.config.max_msg_size == MAX_TICK_SIZE
    # Anyone may publish under tick.<anything>; the server refuses a tick
    # larger than any tick, so it is never stored.
    with pytest.raises(nats.js.errors.BadRequestError, match="maximum"):
        await bus.js.publish(s.tick("junk"), b"x" * (MAX_TICK_SIZE + 1))


async def test_every_stream_admits_max_consumers_and_an_existing_limit_only_grows(
    bus: Bus,
) -> None:
    window = timedelta(minutes=2)
    s = bus.subjects
    streams = (s.ticks_stream, s.events_stream, s.dlq_stream)
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=3000)
    await bus.ensure_streams(duplicate_window=window)
    for name in streams:
        info = await bus.js.stream_info(name)
        assert info.config.max_consumers == 3000
        assert info.config.num_replicas == 1
    # A process with a higher limit raises it; one with a lower one leaves it.
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=5000)
    await bus.ensure_streams(duplicate_window=window)
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=2000)
    await bus.ensure_streams(duplicate_window=window)
    for name in streams:
        assert (await bus.js.stream_info(name)).config.max_consumers == 5000


async def test_a_stream_made_without_a_consumer_limit_gets_one(bus: Bus) -> None:
    # As an older version made it: nats-server's default, 1,000 consumers.
    s = bus.subjects
    await bus.js.add_stream(name=s.events_stream, subjects=[s.all_events])
    assert (await bus.js.stream_info(s.events_stream)).config.max_consumers == -1
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    info = await bus.js.stream_info(s.events_stream)
    assert info.config.max_consumers == bus.limits.max_consumers == 10_000


async def test_more_replicas_than_one_server_has_names_the_setting(bus: Bus) -> None:
    bus.limits = msgspec.structs.replace(bus.limits, stream_replicas=3)
    with pytest.raises(ReplicasError, match="stream_replicas") as caught:
        await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    assert caught.value.replicas == 3
    assert caught.value.stream == bus.subjects.ticks_stream


async def test_a_full_stream_refuses_a_consumer_naming_max_consumers(bus: Bus) -> None:
    bus.limits = msgspec.structs.replace(bus.limits, max_consumers=1)
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    s = bus.subjects
    await bus.ensure_consumer(s.ticks_stream, ConsumerConfig(durable_name="one"))
    # The same consumer again is no new consumer.
    await bus.ensure_consumer(s.ticks_stream, ConsumerConfig(durable_name="one"))
    with pytest.raises(ConsumerLimitError, match="max_consumers") as caught:
        await bus.ensure_consumer(s.ticks_stream, ConsumerConfig(durable_name="two"))
    assert (caught.value.stream, caught.value.durable) == (s.ticks_stream, "two")


async def test_set_up_is_asked_again_while_jetstream_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[BaseException | None] = [
        nats.errors.TimeoutError(),
        nats.js.errors.ServiceUnavailableError(),
        None,
    ]
    calls = 0

    async def create() -> None:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    await Bus().patiently(create, "stream X")
    assert calls == 3
    # A refusal that is no busy server is not asked again; a busy one, only so long.
    monkeypatch.setattr("ctrlplane.bus.connection.SETUP_PATIENCE", timedelta(milliseconds=300))

    async def refused() -> None:
        raise nats.js.errors.BadRequestError()

    with pytest.raises(nats.js.errors.BadRequestError):
        await Bus().patiently(refused, "stream X")

    async def busy() -> None:
        raise nats.errors.TimeoutError()

    started = asyncio.get_running_loop().time()
    with pytest.raises(nats.errors.TimeoutError):
        await Bus().patiently(busy, "stream X")
    assert asyncio.get_running_loop().time() - started < 1.0
