"""PullFeed: a window of messages kept coming from a durable pull consumer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from ctrlplane.bus import Bus, Event, Subjects
from ctrlplane.bus.consumer import PullFeed
from ctrlplane.bus.server import EmbeddedServer
from tests.helpers import wait_for

DURABLE = "feed-test"


async def _consumer(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    await bus.ensure_consumer(
        bus.subjects.events_stream,
        ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=bus.subjects.all_events,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
        ),
    )


async def _publish(bus: Bus, n: int, tag: str = "x") -> None:
    for i in range(n):
        await bus.publish_event(Event(type=f"t.{tag}", source="test", id=f"{tag}-{i}"))


async def test_never_more_than_the_window_unsettled_and_refilled_in_batches(bus: Bus) -> None:
    await _consumer(bus)
    await _publish(bus, 50)
    got: list[Msg] = []
    feed = PullFeed(bus, bus.subjects.events_stream, DURABLE, got.append, window=8)
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await wait_for(lambda: len(got) == 8)
        await asyncio.sleep(0.3)
        assert len(got) == 8 and feed.held == 8
        for msg in got[:3]:  # less than half the window: no new request yet
            await msg.ack()
            feed.settled()
        await asyncio.sleep(0.3)
        assert len(got) == 8
        await got[3].ack()
        feed.settled()  # half the window is free: topped up
        await wait_for(lambda: len(got) == 12)
        assert feed.held == 8
        for msg in got[4:]:
            await msg.ack()
            feed.settled()
        await wait_for(lambda: len(got) == 20)
    finally:
        task.cancel()
        await feed.stop()
    ids = [m.data.decode() for m in got]
    assert len(set(ids)) == len(ids)  # in order, none twice


async def test_keeps_pulling_after_requests_expire(bus: Bus) -> None:
    await _consumer(bus)
    got: list[Msg] = []

    def take(msg: Msg) -> None:
        got.append(msg)
        asyncio.get_running_loop().create_task(msg.ack())
        feed.settled()

    feed = PullFeed(
        bus, bus.subjects.events_stream, DURABLE, take, window=4, expires=timedelta(seconds=0.2)
    )
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.sleep(0.7)  # several requests expire with nothing to deliver
        await _publish(bus, 3)
        await wait_for(lambda: len(got) == 3, within=5)
        await asyncio.sleep(0.5)
        await _publish(bus, 2, "later")
        await wait_for(lambda: len(got) == 5, within=5)
    finally:
        task.cancel()
        await feed.stop()


async def test_survives_a_broker_restart(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats")
    info = await server.start()
    port = int(info.url.rsplit(":", 1)[1])
    bus = Bus(Subjects("feed"))
    await bus.connect(info.client_url)
    got: list[Msg] = []

    def take(msg: Msg) -> None:
        got.append(msg)
        asyncio.get_running_loop().create_task(msg.ack())
        feed.settled()

    feed = PullFeed(
        bus, bus.subjects.events_stream, DURABLE, take, window=4, expires=timedelta(seconds=1)
    )
    task: asyncio.Task[None] | None = None
    try:
        await _consumer(bus)
        await feed.start()
        task = asyncio.create_task(feed.run())
        await _publish(bus, 2, "before")
        await wait_for(lambda: len(got) == 2)
        await server.stop()
        server = EmbeddedServer(tmp_path / "nats", port=port)
        await server.start()
        await _publish(bus, 2, "after")
        await wait_for(lambda: len(got) == 4, within=15)
    finally:
        if task is not None:
            task.cancel()
        await feed.stop()
        await bus.close()
        await server.stop()


async def test_after_stop_nothing_more_is_delivered(bus: Bus) -> None:
    await _consumer(bus)
    got: list[Msg] = []
    feed = PullFeed(bus, bus.subjects.events_stream, DURABLE, got.append, window=4)
    await feed.start()
    task = asyncio.create_task(feed.run())
    await asyncio.sleep(0.2)  # a request is now waiting on the server
    task.cancel()
    await feed.stop()
    await _publish(bus, 3)
    await asyncio.sleep(0.5)
    assert got == []
    # The messages are still there for whoever pulls next.
    again: list[Msg] = []
    other = PullFeed(bus, bus.subjects.events_stream, DURABLE, again.append, window=4)
    await other.start()
    task = asyncio.create_task(other.run())
    try:
        await wait_for(lambda: len(again) == 3)
    finally:
        task.cancel()
        await other.stop()
