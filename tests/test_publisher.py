"""BatchPublisher against a real nats-server: acks gathered, misses handed back."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from nats.js.api import DiscardPolicy, StreamConfig

from ctrlplane.bus.connection import MSG_ID, Bus
from ctrlplane.bus.publisher import BatchPublisher


async def _stream(
    bus: Bus, max_msgs: int | None = None, discard: DiscardPolicy | None = None
) -> str:
    # Stream names hold no dots; the test prefixes do (t.<random>).
    name = bus.subjects.events_stream.replace("_EVENTS", "_BATCH")
    subjects = [f"{bus.subjects.prefix}.batch.>"]
    await bus.js.add_stream(
        StreamConfig(name=name, subjects=subjects, max_msgs=max_msgs, discard=discard)
    )
    return name


def _messages(
    bus: Bus, n: int, subject: str = "batch.x"
) -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        (f"{bus.subjects.prefix}.{subject}", msgspec.json.encode({"n": i}), {MSG_ID: f"m/{i}"})
        for i in range(n)
    ]


async def test_every_message_lands_once_with_a_small_window(bus: Bus) -> None:
    stream = await _stream(bus)
    publisher = BatchPublisher(bus.nc)
    try:
        assert await publisher.publish(_messages(bus, 1000), window=7) == []
        # The same messages again: acked (as duplicates), stored once.
        assert await publisher.publish(_messages(bus, 1000), window=300) == []
    finally:
        await publisher.close()
    info = await bus.js.stream_info(stream)
    assert info.state.messages == 1000
    first = await bus.js.get_msg(stream, seq=1)
    last = await bus.js.get_msg(stream, seq=1000)
    assert first.data is not None and last.data is not None
    assert msgspec.json.decode(first.data) == {"n": 0}
    assert msgspec.json.decode(last.data) == {"n": 999}


async def test_messages_no_stream_takes_are_handed_back(bus: Bus) -> None:
    await _stream(bus)
    publisher = BatchPublisher(bus.nc, stall=timedelta(seconds=1))
    try:
        messages = _messages(bus, 5) + _messages(bus, 3, subject="nowhere.x")
        assert await publisher.publish(messages) == [5, 6, 7]
    finally:
        await publisher.close()


async def test_messages_the_stream_refuses_are_handed_back(bus: Bus) -> None:
    stream = await _stream(bus, max_msgs=3, discard=DiscardPolicy.NEW)
    publisher = BatchPublisher(bus.nc)
    try:
        # With one ack outstanding at a time the first three are stored, in order.
        assert await publisher.publish(_messages(bus, 5), window=1) == [3, 4]
    finally:
        await publisher.close()
    assert (await bus.js.stream_info(stream)).state.messages == 3


async def test_nothing_to_publish_makes_no_subscription(bus: Bus) -> None:
    publisher = BatchPublisher(bus.nc)
    assert await publisher.publish([]) == []
    assert publisher._sub is None
