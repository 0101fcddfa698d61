"""Keeping held JetStream messages alive from a thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence

import nats
import nats.errors
import structlog
from nats.aio.client import Client

from ctrlplane.actors.watchdog import LoopWatchdog

log = structlog.get_logger("ctrlplane.leases")

_IN_PROGRESS = b"+WPI"
_TURN = 0.1
# A lease is trusted while its last renewal is this fraction of ack_wait old:
# the server's timer started when our in-progress ack reached it, a little later.
_TRUST = 0.8
BLOCK_HOLD_MAX = 60.0
"""Seconds a blocked event loop keeps the messages of its runs in progress."""


class _Lease:
    __slots__ = ("ack_wait", "next_due", "renewed", "until")

    def __init__(self, ack_wait: float, since: float) -> None:
        self.ack_wait = ack_wait
        self.renewed = since
        self.next_due = since + ack_wait / 3
        self.until: float | None = None


class LeaseKeeper:
    """Sends in-progress acks for held messages from a thread with its own loop
    and NATS connection, so a blocked event loop does not hand them away.

    JetStream honours ``+WPI`` published to a message's reply subject from
    any connection. Each held message is renewed every third of its
    ``ack_wait``: while it waits in a mailbox or for its record, always;
    while it runs, until the run's own deadline (:meth:`bound`), pushed back
    by as long as the event loop is blocked (the watchdog's beat), since the
    deadline cannot fire in a blocked loop and the frozen run must not run
    elsewhere too. A loop blocked longer than :data:`BLOCK_HOLD_MAX` lets
    every message go. A message whose lease
    lapsed may already be another process's: :meth:`alive` says so, and the
    actor then neither runs nor acks it.

    All methods but :meth:`start` and :meth:`stop` are called from the event
    loop; the lease table is only ever touched by single dictionary
    operations, which the GIL makes atomic.
    """

    def __init__(self, watchdog: LoopWatchdog, *, loop_stale: float = 1.0) -> None:
        self._watchdog = watchdog
        self._loop_stale = loop_stale
        self._leases: dict[str, _Lease] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    # ------------------------------------------------------- from the loop

    def hold(self, reply: str, ack_wait: float) -> None:
        """Keep the message with ack subject ``reply`` alive from now on.

        The server's timer started when it sent the message, which may have
        waited in the socket while the loop was blocked (a blocked loop reads
        nothing): the lease counts from when the loop may have gone deaf.
        """
        self._leases[reply] = _Lease(ack_wait, self._watchdog.deaf_since())

    def bound(self, reply: str, seconds: float | None) -> None:
        """Keep it alive for ``seconds`` from now whatever the loop does
        (a run started), or again only while the loop turns (``None``)."""
        lease = self._leases.get(reply)
        if lease is not None:
            lease.until = None if seconds is None else time.monotonic() + seconds

    def release(self, reply: str) -> None:
        """Stop keeping the message alive (it was settled)."""
        self._leases.pop(reply, None)

    def alive(self, reply: str) -> bool:
        """Whether the message is still surely ours (renewed recently enough)."""
        lease = self._leases.get(reply)
        if lease is None:
            return False
        return time.monotonic() - lease.renewed < lease.ack_wait * _TRUST

    def renewed(self, reply: str) -> None:
        """An in-progress ack for the message was just sent from the loop."""
        lease = self._leases.get(reply)
        if lease is not None:
            now = time.monotonic()
            lease.renewed = now
            lease.next_due = now + lease.ack_wait / 3

    # ------------------------------------------------------------- thread

    def start(self, servers: Sequence[str], token: str | None, *, name: str) -> None:
        """Start the thread and its connection; returns once it is connected
        (or after 5 s, the thread then keeps trying)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._main,
            args=(list(servers), token, name),
            name="ctrlplane-leases",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait(timeout=5)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; waits at most ``timeout`` seconds."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def _main(self, servers: list[str], token: str | None, name: str) -> None:
        try:
            asyncio.run(self._serve(servers, token, name))
        except Exception:
            log.exception("lease keeper stopped")
        finally:
            self._ready.set()

    async def _serve(self, servers: list[str], token: str | None, name: str) -> None:
        nc: Client | None = None
        while nc is None and not self._stop.is_set():
            try:
                nc = await nats.connect(
                    servers,
                    name=f"{name}-leases",
                    token=token,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    error_cb=_quiet,
                    disconnected_cb=_nothing,
                    reconnected_cb=_nothing,
                )
            except (nats.errors.Error, OSError) as exc:
                log.warning("lease keeper cannot connect yet", error=str(exc))
                self._watchdog.check()
                await asyncio.sleep(_TURN)
        self._ready.set()
        if nc is None:
            return
        try:
            while not self._stop.is_set():
                await asyncio.sleep(_TURN)
                self._watchdog.check()
                await self._renew(nc)
        finally:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                async with asyncio.timeout(1):
                    await nc.close()

    async def _renew(self, nc: Client) -> None:
        now = time.monotonic()
        lag = self._watchdog.lag
        loop_alive = lag < self._loop_stale
        # A blocked loop hands nothing away: a run's timeout counts the time
        # its loop turned (its deadline cannot fire in a blocked loop, and a
        # run frozen mid-way must not run elsewhere beside it), and a message
        # waiting in a mailbox runs, or is coalesced, once the loop turns
        # again. A loop blocked past BLOCK_HOLD_MAX is taken for hung, and
        # its messages are let go to other processes.
        frozen = 0.0 if loop_alive else lag
        renewed = False
        for reply, lease in list(self._leases.items()):
            if now < lease.next_due:
                continue
            keep = frozen < BLOCK_HOLD_MAX and (lease.until is None or now < lease.until + frozen)
            if not keep or not nc.is_connected:
                continue
            try:
                await nc.publish(reply, _IN_PROGRESS)
            except (nats.errors.Error, OSError):
                continue
            lease.renewed = now
            lease.next_due = now + lease.ack_wait / 3
            renewed = True
        if renewed:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await nc.flush(timeout=1)


async def _quiet(exc: Exception) -> None:
    log.debug("lease keeper nats error", error=str(exc) or type(exc).__name__)


async def _nothing() -> None:
    return None
