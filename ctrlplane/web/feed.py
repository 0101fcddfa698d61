"""The live events of the status page: ``<prefix>.events.>`` fanned out to its readers.

One core NATS subscription per process, however many pages are open: each
reader (a ``GET /events`` stream) gets a bounded queue of its own, and a
reader too slow to keep up loses its oldest events rather than holding up
the others or growing without bound. The events are decoded and encoded
again before they are handed on, so what a browser receives is one line of
JSON that follows the event schema, whatever a publisher sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import timedelta

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ctrlplane.bus.codec import decode_event_msg, encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import DecodeError

__all__ = ["EventFeed", "Reader"]

log = structlog.get_logger("ctrlplane.web")


class Reader:
    """One reader's queue of encoded events: bounded, the oldest dropped when full.

    Args:
        size: How many events it holds at most.
    """

    def __init__(self, size: int) -> None:
        self._items: deque[bytes] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.dropped = 0
        """Events lost because the reader did not keep up."""
        self.closed = False

    def put(self, item: bytes) -> bool:
        """Queue ``item``; when full, the oldest queued event makes room for it.

        Returns:
            Whether an event was dropped to make room.
        """
        full = len(self._items) == self._items.maxlen
        if full:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()
        return full

    def close(self) -> None:
        """No more events: :meth:`take` returns an empty list from now on."""
        self.closed = True
        self._ready.set()

    async def take(self, within: timedelta) -> list[bytes]:
        """Every queued event, waiting up to ``within`` for the first one.

        Returns an empty list once closed.

        Raises:
            TimeoutError: nothing came within ``within``.
        """
        if not self._items and not self.closed:
            async with asyncio.timeout(within.total_seconds()):
                await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return []
        items = list(self._items)
        self._items.clear()
        return items


class EventFeed:
    """Follows ``<prefix>.events.>`` (a core subscription) from :meth:`start` to :meth:`stop`.

    Args:
        bus: A connected bus.
        queue: How many events each reader may have waiting.
        recent: How many of the latest events a new reader is given first.
    """

    def __init__(self, bus: Bus, *, queue: int = 256, recent: int = 50) -> None:
        self._bus = bus
        self._queue = queue
        self._recent: deque[bytes] = deque(maxlen=recent)
        self._readers: set[Reader] = set()
        self._sub: Subscription | None = None
        self.undecodable = 0
        """Messages on the events subjects that are not events, skipped."""
        self.dropped = 0
        """Events some reader lost because it did not keep up."""

    @property
    def readers(self) -> int:
        """How many readers are joined."""
        return len(self._readers)

    async def start(self) -> None:
        """Subscribe to every event of the prefix."""
        self._sub = await self._bus.nc.subscribe(self._bus.subjects.all_events, cb=self._on_msg)

    def join(self) -> Reader:
        """A new reader, the latest events already queued for it."""
        reader = Reader(self._queue)
        for item in self._recent:
            reader.put(item)
        self._readers.add(reader)
        return reader

    def leave(self, reader: Reader) -> None:
        """Forget ``reader`` (its stream ended)."""
        reader.close()
        self._readers.discard(reader)

    def close_readers(self) -> None:
        """End every reader's stream, so that the server can stop without waiting on them."""
        for reader in list(self._readers):
            self.leave(reader)

    async def stop(self) -> None:
        """End every reader's stream and unsubscribe."""
        self.close_readers()
        sub, self._sub = self._sub, None
        if sub is not None:
            # The connection may be gone already (NATS lost): nothing to undo then.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = decode_event_msg(
                msg,
                events_head=self._bus.subjects.event(""),
                max_size=self._bus.max_event_size,
            )
        except DecodeError as exc:
            # Anyone allowed to publish may send anything: skip it, once logged.
            self.undecodable += 1
            log.debug("status page skipped an undecodable event", reason=exc.reason)
            return
        item = encode(event)
        self._recent.append(item)
        for reader in self._readers:
            if reader.put(item):
                self.dropped += 1
