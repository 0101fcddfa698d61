"""SlotLedger: completed slots in a key-value bucket, against a real nats-server."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from ctrlplane.bus import Bus, ReplicasError
from ctrlplane.bus.kv import SlotCompletion, SlotLedger

RUN = SlotCompletion(run_id="run-1", process="host:1", attempt=1, started=10.0, finished=11.5)


async def test_a_completed_slot_is_known_and_a_second_write_is_no_error(bus: Bus) -> None:
    ledger = SlotLedger(bus, ttl=timedelta(minutes=5))
    await ledger.open()
    assert await ledger.completed("gc", 7) is None
    await ledger.complete("gc", 7, RUN, within=timedelta(seconds=5))
    await ledger.complete("gc", 7, RUN, within=timedelta(seconds=5))  # a retry
    assert await ledger.completed("gc", 7) == RUN
    assert await ledger.completed("gc", 8) is None
    assert await ledger.completed("reconciler", 7) is None
    ledger.close()


async def test_first_deliveries_are_suspect_only_just_after_a_connect(bus: Bus) -> None:
    ledger = SlotLedger(bus, ttl=timedelta(minutes=5), suspect_for=timedelta(0))
    await ledger.open()
    assert not ledger.suspect()
    watchful = SlotLedger(bus, ttl=timedelta(minutes=5), suspect_for=timedelta(minutes=1))
    await watchful.open()
    assert watchful.suspect()
    ledger.close()
    watchful.close()


async def test_a_second_process_binds_to_the_bucket_and_widens_its_ttl(bus: Bus) -> None:
    short = SlotLedger(bus, ttl=timedelta(minutes=3))
    await short.open()
    await short.complete("gc", 1, RUN, within=timedelta(seconds=5))
    longer = SlotLedger(bus, ttl=timedelta(minutes=10))
    await longer.open()
    info = await bus.js.stream_info(f"KV_{bus.subjects.slots_bucket}")
    assert info.config.max_age == timedelta(minutes=10).total_seconds()
    assert info.config.allow_direct
    assert await longer.completed("gc", 1) == RUN
    short.close()
    longer.close()


async def test_each_node_has_its_own_slots_of_a_node_scoped_worker(bus: Bus) -> None:
    ledger = SlotLedger(bus, ttl=timedelta(minutes=5))
    await ledger.open()
    await ledger.complete("telemetry", 7, RUN, within=timedelta(seconds=5), node="node-a")
    assert await ledger.completed("telemetry", 7, "node-a") == RUN
    assert await ledger.completed("telemetry", 7, "node-b") is None
    assert await ledger.completed("telemetry", 7) is None
    ledger.close()


async def test_a_bucket_with_more_replicas_than_servers_names_the_setting(bus: Bus) -> None:
    bus.limits = msgspec.structs.replace(bus.limits, stream_replicas=2)
    ledger = SlotLedger(bus, ttl=timedelta(minutes=3))
    with pytest.raises(ReplicasError, match="stream_replicas") as caught:
        await ledger.open()
    assert caught.value.stream == f"KV_{bus.subjects.slots_bucket}"
