"""Many JetStream publishes at once, their acks gathered by one subscription."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class _ApiError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    # What JetStream answers a publish: the stream and sequence, or an error.
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


@dataclass(eq=False)
class _Batch:
    """The acks one :meth:`BatchPublisher.publish` call waits for."""

    acked: list[bool]
    outstanding: int = 0
    progress: int = 0  # acks (good or bad) received so far
    low_water: int = 0  # wake the sender when outstanding drops to this
    waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    def settled(self, index: int, ok: bool) -> None:
        if index >= len(self.acked) or self.acked[index]:
            return
        self.acked[index] = ok
        self.outstanding -= 1
        self.progress += 1
        waiter = self.waiter
        if waiter is not None and self.outstanding <= self.low_water and not waiter.done():
            waiter.set_result(None)

    async def wait_below(self, level: int, stall: float) -> bool:
        """Wait until at most ``level`` acks are outstanding; False when none
        came for ``stall`` seconds."""
        while self.outstanding > level:
            before = self.progress
            self.low_water = level
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(stall):
                    await self.waiter
            except TimeoutError:
                if self.progress == before:
                    return False
            finally:
                self.waiter = None
        return True


class BatchPublisher:
    """Publishes many messages to JetStream and collects their acks.

    ``JetStreamContext.publish`` makes a request per message: an inbox token,
    a future, a timer, a parsed ``PubAck``. Here every message is a plain
    publish whose reply subject is ``<inbox>.<batch>.<index>`` and one
    subscription on ``<inbox>.>`` settles them all. Which messages were not
    acknowledged (an error from the stream, no stream, no ack in time, the
    connection lost) is returned, not raised: the caller sends those again
    the slow and careful way, and the ``Nats-Msg-Id`` each carries keeps a
    message that did land from being stored twice.

    Args:
        nc: The connection (its subscriptions survive reconnects).
        stall: Give up waiting when no ack came for this long.
    """

    def __init__(self, nc: Client, *, stall: timedelta = timedelta(seconds=2)) -> None:
        self._nc = nc
        self._stall = stall.total_seconds()
        self._prefix = ""
        self._sub: Subscription | None = None
        self._batches: dict[int, _Batch] = {}
        self._next_batch = 0
        self._lock = asyncio.Lock()

    async def publish(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], *, window: int = 256
    ) -> list[int]:
        """Publish ``(subject, payload, headers)`` messages with at most ``window``
        acks outstanding; returns the indexes of those whose ack did not arrive
        or reported an error."""
        if not messages:
            return []
        await self._subscribe()
        batch_id = self._next_batch
        self._next_batch += 1
        batch = _Batch(acked=[False] * len(messages))
        self._batches[batch_id] = batch
        reply = f"{self._prefix}.{batch_id}."
        window = max(1, window)
        refill = window // 2
        try:
            for index, (subject, payload, headers) in enumerate(messages):
                if batch.outstanding >= window and not await batch.wait_below(refill, self._stall):
                    break
                batch.outstanding += 1
                await self._nc.publish(subject, payload, reply=f"{reply}{index}", headers=headers)
            await batch.wait_below(0, self._stall)
        except nats.errors.Error:
            pass  # the connection is away: what is not acked goes back to the caller
        finally:
            del self._batches[batch_id]
        return [i for i, ok in enumerate(batch.acked) if not ok]

    async def close(self) -> None:
        """Stop listening for acks."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _subscribe(self) -> None:
        if self._sub is not None:
            return
        async with self._lock:
            if self._sub is None:
                self._prefix = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(f"{self._prefix}.>", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._prefix) + 1 :].partition(".")
        batch = self._batches.get(int(batch_id)) if batch_id.isdigit() else None
        if batch is None or not index.isdigit():
            return  # a late ack of a batch already handed back
        try:
            ack = _decode_ack(msg.data)
            ok = ack.error is None and ack.seq > 0
        except msgspec.DecodeError:
            ok = False  # "503 no responders" (no stream takes the subject) has no body
        batch.settled(int(index), ok)
