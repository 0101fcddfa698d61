"""The messages an actor holds, and how each is settled with JetStream."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from ctrlplane.actors.delivery import consumer_seq, stream_of, stream_seq
from ctrlplane.actors.leases import LeaseKeeper
from ctrlplane.actors.settle import Settle
from ctrlplane.bus.codec import dead_letter
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.consumer import PullFeed
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.replay import replay_of, replayed_subject


class Settler:
    """Holds one actor's messages from delivery until they are settled.

    Every held message is kept alive by the :class:`LeaseKeeper`. A message
    is acked, naked or terminated only while JetStream surely still holds it
    for this process: one whose lease lapsed was (or will be) delivered
    again, and its redelivery settles it instead.

    Args:
        worker: The worker's name (its dead letters).
        bus: The bus the messages came from.
        leases: Keeps held messages alive.
        log: The actor's logger.
        tick_consumer: The durable name of the worker's tick consumer
            (default: the cluster-scoped one of ``worker``).
        node: The node of a node-scoped worker, written in its dead letters.
    """

    def __init__(
        self,
        worker: str,
        bus: Bus,
        leases: LeaseKeeper,
        log: structlog.typing.FilteringBoundLogger,
        *,
        tick_consumer: str | None = None,
        node: str | None = None,
    ) -> None:
        self._worker = worker
        self._node = node
        self._tick_consumer = tick_consumer or bus.subjects.tick_consumer(worker)
        self._bus = bus
        self._leases = leases
        self._log = log
        self._tick_prefix = bus.subjects.tick("")
        self._replay_prefix = bus.subjects.replay("")
        # Held messages by ack subject, with the feed whose window they still
        # take (None once their run ended and they only wait for the record).
        self.held: dict[str, tuple[Msg, PullFeed | None]] = {}
        # Messages whose records are written, to settle together.
        self._ready: list[tuple[Msg, Settle, float | None]] = []
        self._settling: asyncio.Task[None] | None = None

    def hold(self, msg: Msg, feed: PullFeed, ack_wait: float) -> None:
        """``msg`` was delivered through ``feed``: keep it alive until settled."""
        self.held[msg.reply] = (msg, feed)
        self._leases.hold(msg.reply, ack_wait)

    async def keep_dead_letter(self, msg: Msg, reason: str, attempt: int) -> bool:
        """Publish a copy of ``msg`` with ``reason`` on the dead-letter subject.

        A replay is kept under the subject it first arrived on, so that it
        can be replayed again, and names the letter it replayed.
        """
        # Only the replay stream's messages are trusted to say where they
        # came from: any event publisher could set the header.
        replay = msg.subject.startswith(self._replay_prefix)
        letter = dead_letter(
            worker=self._worker,
            subject=(replayed_subject(msg) if replay else None) or msg.subject,
            reason=reason,
            payload=msg.data,
            attempts=attempt,
            stream=stream_of(msg),
            stream_seq=stream_seq(msg),
            max_bytes=self._bus.dead_letter_room,
        )
        replayed = replay_of(msg) if replay else None
        if self._node is not None or replayed is not None:
            letter = msgspec.structs.replace(letter, node=self._node, replay_of=replayed)
        try:
            await self._bus.publish_dead_letter(letter)
        except (BusError, nats.errors.Error) as exc:
            self._log.error("dead-letter publish failed; message handed back", error=str(exc))
            return False
        return True

    def release_window(self, msg: Msg) -> None:
        """The message's run is over: its place in the feed's window is free."""
        held = self.held.get(msg.reply)
        if held is not None and held[1] is not None:
            held[1].settled()
            self.held[msg.reply] = (msg, None)

    def surely_ours(self, msg: Msg) -> bool:
        """Whether JetStream surely still holds ``msg`` for this process: its
        lease is fresh, or it is an event (events are at least once, and a
        copy run twice is allowed, so an event in doubt is treated as ours)."""
        return not msg.subject.startswith(self._tick_prefix) or self._leases.alive(msg.reply)

    async def tick_still_ours(self, msg: Msg) -> bool:
        """Ask about a tick whose lease is in doubt (it may have waited in the
        socket while the loop was blocked, or NATS was away): renewed, then
        kept only if its consumer (one tick out at a time) has delivered
        nothing since, not even a redelivery of it."""
        try:
            await msg.in_progress()
            delivered = consumer_seq(msg)
            info = await self._bus.js.consumer_info(
                self._bus.subjects.ticks_stream, self._tick_consumer
            )
        except (nats.errors.Error, BusError, TimeoutError) as exc:
            self._log.warning("cannot tell whether a held tick is still ours", error=str(exc))
            return False
        ours = delivered is not None and info.delivered.consumer_seq == delivered
        if ours:
            self._leases.renewed(msg.reply)
        return ours

    def drop(self, msg: Msg) -> None:
        """Forget ``msg`` without settling it: it is no longer surely ours."""
        self.release_window(msg)
        self.held.pop(msg.reply, None)
        self._leases.release(msg.reply)

    def settle_soon(self, msg: Msg, how: Settle, delay: float | None) -> None:
        """Settle ``msg`` from a commit callback, together with the rest of its batch."""
        self._ready.append((msg, how, delay))
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(
                self._settle_ready(), name=f"settle-{self._worker}"
            )

    async def _settle_ready(self) -> None:
        while self._ready:
            ready, self._ready = self._ready, []
            for msg, how, delay in ready:
                await self.settle(msg, how, delay)

    async def settle(self, msg: Msg, how: Settle, delay: float | None = None) -> None:
        if msg.reply not in self.held:
            return  # settled already (a stop handed it back meanwhile)
        ours = self.surely_ours(msg) or await self.tick_still_ours(msg)
        self.drop(msg)
        if not ours:
            # Its lease lapsed (the process stalled, NATS was away) and
            # JetStream redelivered it: an ack now could release another
            # process's hold on it. Its redelivery settles it instead.
            self._log.warning("lease lapsed; message left to its redelivery", how=how.value)
            return
        try:
            if how is Settle.ACK:
                await msg.ack()
            elif how is Settle.NAK:
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except nats.errors.Error as exc:
            # The server redelivers after ack_wait: at least once, not lost.
            self._log.warning("could not settle message", how=how.value, error=str(exc))

    async def finish(self) -> None:
        """Settle what is ready, then hand back every message still held."""
        if self._settling is not None:
            await self._settling
        for msg, _ in list(self.held.values()):
            await self.settle(msg, Settle.NAK)
