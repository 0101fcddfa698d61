"""Nodes: heartbeats in a key-value bucket on a real nats-server, liveness, one store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ctrlplane.bus.connection import Bus
from ctrlplane.cluster.errors import StoreMismatchError
from ctrlplane.cluster.nodes import NodeRegistry, _cancelled
from tests.helpers import wait_for

TIMEOUT = timedelta(seconds=2)
EVERY = timedelta(milliseconds=200)


@contextlib.asynccontextmanager
async def joined(
    bus: Bus, node: str, process: str, store_id: str = "s-1"
) -> AsyncIterator[NodeRegistry]:
    registry = NodeRegistry(
        bus, node=node, process=process, store_id=store_id, timeout=TIMEOUT, every=EVERY
    )
    await registry.start()
    try:
        yield registry
    finally:
        await registry.stop()


async def test_a_node_sees_itself_and_the_others(bus: Bus) -> None:
    async with joined(bus, "a", "host-a:1") as a:
        assert a.live() == ["a"]
        async with joined(bus, "b", "host-b:1") as b:
            # b read the bucket before start() returned: a is there already.
            assert b.live() == ["a", "b"]
            await wait_for(lambda: a.live() == ["a", "b"])
            [info_a, info_b] = b.nodes()
            assert (info_a.name, info_a.live, info_a.store_ids) == ("a", True, ["s-1"])
            assert [p.process for p in info_b.processes] == ["host-b:1"]


async def test_a_node_with_two_processes_is_one_node(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as first, joined(bus, "a", "h:2"):
        await wait_for(lambda: len(first.nodes()) == 1 and len(first.nodes()[0].processes) == 2)
        assert first.live() == ["a"]


async def test_a_silent_node_is_dead_after_the_timeout(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as a:
        b = NodeRegistry(bus, node="b", process="h:2", store_id="s-1", timeout=TIMEOUT, every=EVERY)
        await b.start()
        await wait_for(lambda: a.live() == ["a", "b"])
        # b freezes: its heartbeat task stops without a last beat, as when
        # its process is killed or its host is cut off.
        assert b._task is not None
        b._task.cancel()
        loop = asyncio.get_running_loop()
        silent_since = loop.time()
        await wait_for(lambda: a.live() == ["a"], within=TIMEOUT.total_seconds() + 10)
        # Dead only once the timeout has passed since its last beat.
        assert loop.time() - silent_since >= TIMEOUT.total_seconds() - EVERY.total_seconds()
        [_, info_b] = a.nodes()
        assert not info_b.live and not info_b.processes[0].live


async def test_a_process_that_stops_leaves_its_node_live_until_the_timeout(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as a:
        async with joined(bus, "b", "h:2"):
            await wait_for(lambda: a.live() == ["a", "b"])
        # A restart within node_timeout must not move b's instances away.
        await wait_for(lambda: any(p.stopped for n in a.nodes() for p in n.processes))
        assert a.live() == ["a", "b"]
        await wait_for(lambda: a.live() == ["a"], within=TIMEOUT.total_seconds() + 10)


async def test_a_process_on_another_store_refuses_to_join(bus: Bus) -> None:
    async with joined(bus, "a", "h:1", store_id="s-first"):
        second = NodeRegistry(
            bus, node="b", process="h:2", store_id="s-second", timeout=TIMEOUT, every=EVERY
        )
        with pytest.raises(StoreMismatchError) as caught:
            await second.start()
        assert "s-first" in str(caught.value) and "s-second" in str(caught.value)
        assert caught.value.node == "a"


async def test_a_dead_process_on_another_store_does_not_block_a_new_cluster(bus: Bus) -> None:
    old = NodeRegistry(bus, node="a", process="h:1", store_id="s-old", timeout=TIMEOUT, every=EVERY)
    await old.start()
    assert old._task is not None
    old._task.cancel()  # frozen, as above
    assert not await _joins(bus, "b", "h:2", "s-new")  # a may still be alive
    await wait_for(
        lambda: _joins(bus, "b", "h:2", "s-new"), within=TIMEOUT.total_seconds() + 10, interval=0.3
    )


async def _joins(bus: Bus, node: str, process: str, store_id: str) -> bool:
    try:
        async with joined(bus, node, process, store_id=store_id):
            return True
    except StoreMismatchError:
        return False


async def test_an_unreadable_heartbeat_is_ignored(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as a:
        kv = await bus.js.key_value(bus.subjects.nodes_bucket)
        await kv.put("x.garbage", b"\xff not json")
        async with joined(bus, "b", "h:2"):
            await wait_for(lambda: a.live() == ["a", "b"])


async def test_heartbeats_do_not_pile_up_consumers(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as a, joined(bus, "b", "h:2"):
        await wait_for(lambda: a.live() == ["a", "b"])
        # Ten more beats of each (stream sequences count every beat).
        first = a._echoed
        await wait_for(lambda: a._echoed >= first + 20, within=30)
        info = await bus.js.stream_info(f"KV_{bus.subjects.nodes_bucket}")
        assert info.state.consumer_count == 2  # one watcher each, whatever the beats


async def test_a_lost_watcher_is_started_again(bus: Bus) -> None:
    async with joined(bus, "a", "h:1") as a:
        stream = f"KV_{bus.subjects.nodes_bucket}"
        # The server forgets a's watcher's consumer, as after a restart of a
        # server that kept it in memory only.
        for consumer in await bus.js.consumers_info(stream):
            await bus.js.delete_consumer(stream, consumer.name)
        async with joined(bus, "b", "h:2"):
            await wait_for(lambda: a.live() == ["a", "b"])


async def test_stopping_ends_a_task_that_swallowed_its_cancellation() -> None:
    # As asyncio.wait_for (inside nats-py's calls) can on Python 3.11: an
    # earlier stop() waited on such a task for ever.
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await _cancelled(task)
    assert swallowed.is_set() and task.cancelled()
