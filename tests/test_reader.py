"""A one-off stream read leaves no consumer behind, on the real nats-server."""

from __future__ import annotations

from datetime import timedelta

import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.reader import stream_reader


async def test_a_reader_reads_from_where_it_is_told_and_is_removed_after(bus: Bus) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    seqs = [await bus.publish_event(Event(type="t.read", source="test")) for _ in range(3)]
    stream = bus.subjects.events_stream
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seqs[1])
    async with stream_reader(bus, stream, config) as (info, sub):
        assert info.num_pending == 2
        assert info.config.mem_storage is True
        msgs = await sub.fetch(2, timeout=5)
        assert [m.metadata.sequence.stream for m in msgs] == seqs[1:]
    assert (await bus.js.stream_info(stream)).state.consumer_count == 0


async def test_a_reader_of_no_stream_raises_not_found(bus: Bus) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        async with stream_reader(bus, "NO_SUCH_STREAM", ConsumerConfig()):
            pass
