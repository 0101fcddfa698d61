"""The dead-letter stream as the control API reads, purges and replays it.

Observers and admins may not read ``<prefix>.dlq.*`` themselves (their NATS
permissions stop at the events stream), so the service reads it for them,
with the ``service`` role's JetStream API rights.
"""

from __future__ import annotations

import json
from collections import deque

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from ctrlplane.api.errors import NotFoundError, RefusedError, UnavailableError
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.messages import DeadLetter
from ctrlplane.bus.reader import stream_reader
from ctrlplane.bus.replay import replay_refusal, to_replay

__all__ = [
    "FETCH_BATCH",
    "FETCH_WAIT",
    "REPLAY_BATCH",
    "Replayed",
    "get_letter",
    "list_letters",
    "purge_letters",
    "replay_letter",
    "replay_worker",
]

FETCH_BATCH = 256
"""Letters one fetch asks for."""
FETCH_WAIT = 2.0
"""Seconds one fetch waits; a fetch that times out ends the read."""
PURGE_WAIT = 10.0
"""Seconds a purge request to JetStream may take."""
REPLAY_BATCH = 1000
"""Letters one ``dlq_replay`` of a whole worker sends back at most (oldest
first), so that its answer comes within the CLI's wait; the rest are left."""


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
    found, _ = await _read(bus, worker, limit, newest=True)
    return list(reversed(found))


async def _read(
    bus: Bus, worker: str | None, limit: int, *, newest: bool
) -> tuple[list[tuple[int, DeadLetter]], int]:
    """``limit`` letters, oldest first: the newest of them, or the oldest (then
    the read stops there); and how many letters pending were not read."""
    s = bus.subjects
    config = ConsumerConfig(filter_subject=_filter(bus, worker), deliver_policy=DeliverPolicy.ALL)
    found: deque[tuple[int, DeadLetter]] = deque(maxlen=limit if newest else None)
    try:
        async with stream_reader(bus, s.dlq_stream, config) as (info, sub):
            left = info.num_pending or 0
            while left > 0 and (newest or len(found) < limit):
                want = (
                    min(FETCH_BATCH, left, limit - len(found))
                    if not newest
                    else min(FETCH_BATCH, left)
                )
                try:
                    msgs = await sub.fetch(want, timeout=FETCH_WAIT)
                except TimeoutError:  # nats-py's TimeoutError derives from the builtin
                    break
                left -= len(msgs)
                for msg in msgs:
                    try:
                        letter = msgspec.json.decode(msg.data, type=DeadLetter)
                    except msgspec.DecodeError:
                        continue  # not ours: something else published on a dlq subject
                    found.append((msg.metadata.sequence.stream, letter))
    except nats.js.errors.NotFoundError:
        raise UnavailableError(f"no dead-letter stream {s.dlq_stream} on this NATS") from None
    return list(found), left


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


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`replay_worker` did: ids replayed, ids skipped with why, letters left."""

    ids: list[int]
    skipped: list[tuple[int, str]]
    left: int


async def replay_letter(bus: Bus, seq: int) -> None:
    """Send dead letter ``seq`` back to its worker alone, then remove it.

    At least once: the letter is removed only once JetStream has stored its
    replay, so a failure in between leaves both; the replay's ``Nats-Msg-Id``
    (``replay/<seq>``) keeps a second replay of it within two minutes from
    being stored twice. A replay that fails again becomes a new dead letter.

    Raises:
        NotFoundError: there is no letter ``seq``.
        RefusedError: it cannot be replayed (a tick, a payload kept in part),
            or no process runs its worker's replay consumer; it is kept.
        UnavailableError: the replay could not be stored (the letter is
            kept), or was stored but the letter could not be removed.
    """
    await _replay(bus, seq, await get_letter(bus, seq))


async def replay_worker(bus: Bus, worker: str) -> Replayed:
    """Replay the dead letters ``worker`` has now, oldest first, up to
    :data:`REPLAY_BATCH` of them; those that cannot be replayed are skipped.

    Letters kept while it runs (a replay failing again) wait for the next
    call: one call never chases its own failures.

    Raises:
        RefusedError: no process runs the worker's replay consumer.
        UnavailableError: as :func:`replay_letter`; the letters replayed
            before it are replayed and removed.
    """
    batch, left = await _read(bus, worker, REPLAY_BATCH, newest=False)
    ids: list[int] = []
    skipped: list[tuple[int, str]] = []
    for seq, letter in batch:
        if letter.worker != worker:
            continue  # published on the worker's subject by someone else
        problem = replay_refusal(letter, bus.subjects)
        if problem is not None:
            skipped.append((seq, problem))
            continue
        try:
            await _replay(bus, seq, letter)
        except NotFoundError:
            continue  # removed meanwhile (replayed or purged by another request)
        ids.append(seq)
    return Replayed(ids=ids, skipped=skipped, left=left)


async def _replay(bus: Bus, seq: int, letter: DeadLetter) -> None:
    s = bus.subjects
    problem = replay_refusal(letter, s)
    if problem is not None:
        raise RefusedError(f"dead letter {seq} is not replayed: {problem}; it is kept")
    replay = to_replay(letter, seq, s)
    try:
        await bus.js.consumer_info(s.replay_stream, replay.consumer)
    except nats.js.errors.NotFoundError:
        # Kept in the replay stream, it would wait unread (and be gone from
        # the dead letters): say so instead while the letter is still here.
        raise RefusedError(
            f"dead letter {seq} is not replayed: no process runs {letter.worker}'s replays "
            f"(no consumer {replay.consumer} on {s.replay_stream}); it is kept"
        ) from None
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise UnavailableError(f"dead letter {seq} is not replayed: {exc}; it is kept") from None
    try:
        await bus.publish_replay(replay.subject, replay.payload, replay.headers)
    except (BusError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise UnavailableError(f"dead letter {seq} is not replayed: {exc}; it is kept") from None
    try:
        await bus.js.delete_msg(s.dlq_stream, seq)
    except nats.js.errors.NotFoundError:
        pass  # removed meanwhile: by a purge, or by this replay asked twice
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise UnavailableError(
            f"dead letter {seq} was replayed but is still kept ({exc}): "
            "replaying it again within two minutes does not run it twice"
        ) from None
