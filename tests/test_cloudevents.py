"""Our events against the official CloudEvents SDK, on a real nats-server (issue 12).

An event we publish, taken off a real NATS subscription, parses with the SDK
(both its current ``cloudevents.core`` API and the ``cloudevents.v1`` one),
an event the SDK writes, published by a plain NATS client, is handled by a
real worker exactly once, and the events the decoder refuses reach the
dead-letter queue with their reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import nats
import pytest_asyncio
from cloudevents.core.bindings.http import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1.http import from_json as v1_from_json
from nats.aio.msg import Msg

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.events import EVENT_TYPES, HealthChange, data_of
from ctrlplane.store.db import Store
from ctrlplane.store.health import HealthStatus
from tests.event_contract import payload_problems
from tests.helpers import dead_letters, wait_for

STORE_BACKENDS = ("sqlite",)  # the store only records the runs here


class OnHealth:
    """An event-driven worker that remembers the events it ran."""

    name = "on-health"
    interval = timedelta(0)

    def __init__(self, subscriptions: tuple[str, ...] = ("health.*",)) -> None:
        self.subscriptions = subscriptions
        self.events: list[Event] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.events.append(ctx.event)


@pytest_asyncio.fixture
async def scheduler(bus: Bus, store: Store) -> AsyncIterator[Scheduler]:
    # As the control plane builds it: built-in types' data checked on the way in.
    s = Scheduler(bus, runs=store.runs, process="test-ce", event_types=EVENT_TYPES)
    try:
        yield s
    finally:
        await s.stop(grace=timedelta(seconds=1))


def _health_failed_data() -> HealthChange:
    return HealthChange(
        name="web",
        check="http",
        previous=HealthStatus.HEALTHY,
        current=HealthStatus.UNHEALTHY,
        message="connection refused",
    )


async def test_an_event_we_publish_parses_with_the_cloudevents_sdk(
    bus: Bus, nats_server: ServerInfo
) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    received: asyncio.Queue[Msg] = asyncio.Queue()
    nc = await nats.connect(nats_server.client_url)
    try:
        await nc.subscribe(bus.subjects.all_events, cb=received.put)
        await nc.flush()
        event = Event(
            type="health.failed",
            source="health_runner",
            subject="web",
            instance_id="i-1",
            data=data_of(_health_failed_data()),
        )
        await bus.publish_event(event)
        async with asyncio.timeout(10):
            msg = await received.get()
    finally:
        await nc.close()
    assert msg.subject == bus.subjects.event("health.failed")
    assert payload_problems(msg.data) == []

    parsed = JSONFormat().read(CloudEvent, msg.data)
    assert parsed.get_specversion() == "1.0"
    assert (parsed.get_id(), parsed.get_source(), parsed.get_type()) == (
        event.id,
        "health_runner",
        "health.failed",
    )
    assert parsed.get_time() == event.time
    assert parsed.get_subject() == "web"
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_extension("instanceid") == "i-1"
    assert parsed.get_data() == event.data
    # latency had no value: absent, never null.
    assert "latency" not in event.data

    legacy_api = v1_from_json(msg.data)
    assert legacy_api["specversion"] == "1.0"
    assert legacy_api["instanceid"] == "i-1"
    assert legacy_api.get_data() == event.data


async def test_an_event_the_sdk_writes_is_handled_by_a_worker_once(
    scheduler: Scheduler, bus: Bus, nats_server: ServerInfo
) -> None:
    worker = OnHealth()
    scheduler.register(worker)
    await scheduler.start()
    sent = CloudEvent(
        {
            "type": "health.failed",
            "source": "https://monitor.example/probes",
            "subject": "web",
            "instanceid": "i-7",
        },
        data_of(_health_failed_data()),
    )
    body = to_structured(sent, JSONFormat()).body
    # Another service with nothing of ours: a plain JetStream publish.
    nc = await nats.connect(nats_server.client_url)
    try:
        await nc.jetstream().publish(bus.subjects.event("health.failed"), body)
    finally:
        await nc.close()
    await wait_for(lambda: len(worker.events) >= 1)
    consumer = bus.subjects.event_consumer(worker.name)

    async def settled() -> bool:
        info = await bus.js.consumer_info(bus.subjects.events_stream, consumer)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await wait_for(settled)
    [got] = worker.events
    assert (got.id, got.source, got.type) == (
        sent.get_id(),
        "https://monitor.example/probes",
        "health.failed",
    )
    sent_time = sent.get_time()
    assert sent_time is not None
    assert got.time == sent_time.astimezone(UTC)
    assert got.time <= datetime.now(UTC)
    assert (got.subject, got.instance_id) == ("web", "i-7")
    assert got.data == data_of(_health_failed_data())
    assert await dead_letters(bus, worker.name) == []


def _cloudevent(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "monitor",
        "type": "health.failed",
        "time": "2026-11-30T06:34:33+01:00",
        "data": data_of(_health_failed_data()),
        **changes,
    }
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


async def test_refused_events_reach_the_dead_letter_queue_with_the_reason(
    scheduler: Scheduler, bus: Bus
) -> None:
    worker = OnHealth(subscriptions=("health.*", "interop.*"))
    scheduler.register(worker)
    await scheduler.start()
    refused = [
        ("interop.mismatch", _cloudevent(id="r1"), "does not match the subject"),
        ("health.failed", _cloudevent(id="r2", data={"check": "http"}), "is not a HealthChange"),
        (
            "health.failed",
            _cloudevent(id="r3", datacontenttype="application/xml"),
            "datacontenttype 'application/xml' is refused",
        ),
        ("health.failed", _cloudevent(id="r4", data=..., data_base64="aGk="), "data_base64"),
        ("health.failed", _cloudevent(id="r5", specversion="0.3"), "specversion '0.3'"),
        ("health.failed", _cloudevent(id="r6", time=...), "time is required"),
    ]
    for event_type, payload, _ in refused:
        await bus.js.publish(bus.subjects.event(event_type), payload)
    # Handled: data null (as {}), on a type with no data schema, and the
    # previous release's envelope.
    await bus.js.publish(
        bus.subjects.event("interop.ping"),
        _cloudevent(id="ok-1", type="interop.ping", data=None),
    )
    legacy: dict[str, object] = {"id": "ok-2", "type": "health.failed", "source": "old"}
    legacy |= {"instance_id": "i-1", "data": data_of(_health_failed_data())}
    await bus.js.publish(bus.subjects.event("health.failed"), json.dumps(legacy).encode())

    await wait_for(lambda: len(worker.events) == 2)
    assert [(e.id, e.data) for e in worker.events] == [
        ("ok-1", {}),
        ("ok-2", data_of(_health_failed_data())),
    ]
    assert worker.events[1].instance_id == "i-1"
    letters = await dead_letters(bus, worker.name)
    assert len(letters) == len(refused)
    for letter, (event_type, payload, says) in zip(letters, refused, strict=True):
        assert says in letter.reason, letter.reason
        assert letter.subject == bus.subjects.event(event_type)
        assert letter.payload == payload.decode()
