"""A one-off read of a stream: an unnamed consumer, bound, read, then removed."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo
from nats.js.client import JetStreamContext

from ctrlplane.bus.connection import Bus

READER_IDLE = 30.0
"""Seconds after which the server drops a reader's consumer, should its removal fail."""


@contextlib.asynccontextmanager
async def stream_reader(
    bus: Bus, stream: str, config: ConsumerConfig
) -> AsyncIterator[tuple[ConsumerInfo, JetStreamContext.PullSubscription]]:
    """Read ``stream`` from where ``config`` says (its filter and deliver
    policy) through a consumer the server names, acks nothing and keeps in
    memory; it is deleted on the way out.

    Raises:
        nats.js.errors.NotFoundError: there is no such stream.
    """
    info = await bus.js.add_consumer(
        stream,
        dataclasses.replace(
            config, ack_policy=AckPolicy.NONE, inactive_threshold=READER_IDLE, mem_storage=True
        ),
    )
    assert info.name is not None
    sub = await bus.js.pull_subscribe_bind(info.name, stream=stream)
    try:
        yield info, sub
    finally:
        await sub.unsubscribe()
        # The idle threshold removes it anyway, should this fail.
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await bus.js.delete_consumer(stream, info.name)
