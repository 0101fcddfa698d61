"""A continuous pull from a durable JetStream consumer, delivered to a callback.

nats-py's ``fetch`` costs a task, a timer and a round trip per message; a
control plane reading events all day wants less. :class:`PullFeed` keeps a
window of messages requested from the server with long-lived pull requests
on one inbox subscription and hands each message to a callback as it
arrives; the caller says when it has settled (acked, nacked or terminated)
a message, and the window is topped up in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import timedelta

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ctrlplane.bus.connection import Bus

log = structlog.get_logger("ctrlplane.bus")

_API = "$JS.API"
_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"


class PullFeed:
    """Keeps up to ``window`` messages of a durable pull consumer coming.

    Args:
        bus: A connected bus.
        stream: The stream of the consumer.
        durable: The durable consumer's name (it must exist).
        on_message: Called with each message, in order, from the event loop.
        window: How many messages may be delivered and not yet settled.
        expires: How long one pull request waits on the server.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], None],
        *,
        window: int,
        expires: timedelta = timedelta(seconds=5),
    ) -> None:
        self._bus = bus
        self._next = f"{_API}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._on_message = on_message
        self._window = max(1, window)
        # Top up once half the window is free: a request costs a round trip
        # whatever its size.
        self._low = max(1, self._window // 2)
        self._expires = expires.total_seconds()
        self._held = 0
        self._outstanding = 0
        self._need = asyncio.Event()
        self._heard = asyncio.get_running_loop().time()
        self._sub: Subscription | None = None
        self._inbox = ""
        self._paused = False

    @property
    def held(self) -> int:
        """Messages delivered and not yet settled."""
        return self._held

    async def start(self) -> None:
        nc = self._bus.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._receive)
        self._bus.on_reconnect(self._reset)
        self._need.set()

    @property
    def paused(self) -> bool:
        """Whether the feed has stopped asking for messages."""
        return self._paused

    def pause(self) -> None:
        """Ask for no more messages: those not yet delivered wait in the stream.

        Pull requests already on the server may still deliver until they
        expire (``expires`` at most): the caller keeps what arrives.
        """
        self._paused = True

    def resume(self) -> None:
        """Ask for messages again after :meth:`pause`."""
        self._paused = False
        self._need.set()

    def settled(self) -> None:
        """One delivered message was acked, nacked or terminated."""
        self._held -= 1
        if self._free() >= self._low:
            self._need.set()

    def _free(self) -> int:
        return self._window - self._held - self._outstanding

    async def _receive(self, msg: Msg) -> None:
        self._heard = asyncio.get_running_loop().time()
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if not status:
            self._outstanding = max(0, self._outstanding - 1)
            self._held += 1
            self._on_message(msg)
            return
        if status == "100":
            return  # idle heartbeat
        if status in ("404", "408"):
            # The request ended (expired, or nothing to wait for); what it did
            # not deliver is free again.
            unfilled = _int(headers.get(_PENDING) if headers else None)
            self._outstanding = max(0, self._outstanding - unfilled) if unfilled else 0
        else:
            # 409 and friends: the consumer was deleted, a leader changed, a
            # limit was hit. Start afresh after a pause.
            description = headers.get("Description", "") if headers else ""
            log.warning("pull request refused", status=status, description=description)
            self._outstanding = 0
            await asyncio.sleep(1.0)
        self._need.set()

    async def _reset(self) -> None:
        # Pull requests do not survive a reconnect: ask again.
        self._outstanding = 0
        self._need.set()

    async def run(self) -> None:
        """Keep the window full until cancelled; run it as a task of its own."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._expires):
                    await self._need.wait()
            self._need.clear()
            if self._paused:
                continue
            if self._outstanding and loop.time() - self._heard > 2 * self._expires + 1:
                # No delivery and no end-of-request status for too long: the
                # requests were lost (a server restart, say). Ask again.
                self._outstanding = 0
            free = self._free()
            if free <= 0 or (self._outstanding and free < self._low):
                continue
            body = {"batch": free, "expires": int(self._expires * 1e9)}
            try:
                await self._bus.nc.publish(self._next, json.dumps(body).encode(), reply=self._inbox)
            except (nats.errors.Error, OSError) as exc:
                log.warning("pull request not sent", error=str(exc))
                await asyncio.sleep(0.5)
                self._need.set()
                continue
            self._outstanding += free
            self._heard = loop.time()

    async def stop(self) -> None:
        """Stop receiving; the server drops our waiting requests once we unsubscribe.

        Cancel the task running :meth:`run` first.
        """
        self._bus.off_reconnect(self._reset)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
