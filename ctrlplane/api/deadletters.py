"""The dead-letter stream as the control API reads and purges it.

Observers and admins may not read ``<prefix>.dlq.*`` themselves (their NATS
permissions stop at the events stream), so the service reads it for them,
with the ``service`` role's JetStream API rights.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane.api.errors import NotFoundError, UnavailableError
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.messages import DeadLetter

__all__ = ["FETCH_BATCH", "FETCH_WAIT", "get_letter", "list_letters", "purge_letters"]

FETCH_BATCH = 256
"""Letters one fetch asks for."""
FETCH_WAIT = 2.0
"""Seconds one fetch waits; a fetch that times out ends the read."""
PURGE_WAIT = 10.0
"""Seconds a purge request to JetStream may take."""


def _filter(bus: Bus, worker: str | None) -> str:
    s = bus.subjects
    return s.all_dlq if worker is None else s.dlq(worker)


async def list_letters(bus: Bus, worker: str | None, limit: int) -> list[tuple[int, DeadLetter]]:
    """The newest ``limit`` dead letters (of ``worker``, or all) with their stream
    sequences, newest first.

    Read oldest first by an unnamed consumer (the server drops it once idle)
    that stops at the count pending when it was made: letters kept while it
    reads wait for the next call, so the read is bounded by the stream's size
    (``dlq_max_bytes``). A letter that does not decode is skipped.
    """
    s = bus.subjects
    try:
        info = await bus.js.add_consumer(
            s.dlq_stream,
            ConsumerConfig(
                filter_subject=_filter(bus, worker),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
                mem_storage=True,
            ),
        )
    except nats.js.errors.NotFoundError:
        raise UnavailableError(f"no dead-letter stream {s.dlq_stream} on this NATS") from None
    newest: deque[tuple[int, DeadLetter]] = deque(maxlen=limit)
    left = info.num_pending or 0
    assert info.name is not None
    sub = await bus.js.pull_subscribe_bind(info.name, stream=s.dlq_stream)
    try:
        while left > 0:
            try:
                msgs = await sub.fetch(min(FETCH_BATCH, left), timeout=FETCH_WAIT)
            except TimeoutError:  # nats-py's TimeoutError derives from the builtin
                break
            left -= len(msgs)
            for msg in msgs:
                try:
                    letter = msgspec.json.decode(msg.data, type=DeadLetter)
                except msgspec.DecodeError:
                    continue  # not ours: something else published on a dlq subject
                newest.append((msg.metadata.sequence.stream, letter))
    finally:
        await sub.unsubscribe()
        # The inactive threshold removes it anyway, should this fail.
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await bus.js.delete_consumer(s.dlq_stream, info.name)
    return list(reversed(newest))


async def get_letter(bus: Bus, seq: int) -> DeadLetter:
    """The dead letter at sequence ``seq`` of the dead-letter stream.

    Raises:
        NotFoundError: there is none there (purged, expired, or never kept).
    """
    s = bus.subjects
    if seq < 1:
        raise NotFoundError(f"no dead letter {seq}: ids start at 1")
    try:
        raw = await bus.js.get_msg(s.dlq_stream, seq=seq)
    except nats.js.errors.NotFoundError:
        raise NotFoundError(f"no dead letter {seq} (purged, expired, or never kept)") from None
    try:
        return msgspec.json.decode(raw.data or b"", type=DeadLetter)
    except msgspec.DecodeError as exc:
        raise NotFoundError(f"message {seq} of {s.dlq_stream} is no dead letter: {exc}") from None


async def purge_letters(bus: Bus, worker: str | None) -> int:
    """Remove the dead letters of ``worker`` (or all); returns how many were removed."""
    s = bus.subjects
    # nats-py's purge_stream says only whether it worked; JetStream's answer
    # also says how many messages went.
    body = json.dumps({"filter": _filter(bus, worker)}).encode()
    reply = await bus.nc.request(f"$JS.API.STREAM.PURGE.{s.dlq_stream}", body, timeout=PURGE_WAIT)
    answer = json.loads(reply.data)
    if "error" in answer:
        error = answer["error"]
        if error.get("code") == 404:
            raise UnavailableError(f"no dead-letter stream {s.dlq_stream} on this NATS")
        raise UnavailableError(f"purging {s.dlq_stream}: {error.get('description', error)}")
    return int(answer.get("purged", 0))
