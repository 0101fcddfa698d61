"""The request/reply control API on ``<prefix>.api.>``: every process answers."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ctrlplane.actors.info import WorkerInfo
from ctrlplane.bus.codec import decode, encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import DecodeError

if TYPE_CHECKING:
    # The answering side only: `ctrlplane workers` asks, and need not load the runtime.
    from ctrlplane.actors.scheduler import Scheduler

log = structlog.get_logger("ctrlplane.control")


class WorkersReply(Struct, frozen=True, kw_only=True):
    """One process's answer to ``<prefix>.api.workers``."""

    process: str
    workers: list[WorkerInfo]


class ControlApi:
    """Answers control requests for one scheduler.

    No queue group: a request on ``<prefix>.api.workers`` reaches every
    process, and each answers for its own workers.
    """

    def __init__(self, bus: Bus, scheduler: Scheduler) -> None:
        self._bus = bus
        self._scheduler = scheduler
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        sub = await self._bus.nc.subscribe(self._bus.subjects.api("workers"), cb=self._on_workers)
        self._subs.append(sub)

    async def _on_workers(self, msg: Msg) -> None:
        if not msg.reply:
            return
        reply = WorkersReply(process=self._scheduler.process, workers=self._scheduler.workers())
        try:
            await msg.respond(encode(reply))
        except Exception as exc:  # a requester gone away must not hurt the process
            log.warning("could not answer control request", error=str(exc))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


async def list_workers(
    bus: Bus,
    *,
    within: timedelta = timedelta(seconds=2),
    settle: timedelta = timedelta(milliseconds=300),
) -> list[WorkersReply]:
    """Ask every process on the bus for its workers.

    Gathers replies until ``settle`` passes with no new one after the first,
    or ``within`` in all; an empty list means no process answered.
    """
    nc = bus.nc
    inbox = nc.new_inbox()
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        replies.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=collect)
    out: list[WorkersReply] = []
    loop = asyncio.get_running_loop()
    try:
        await nc.publish(bus.subjects.api("workers"), b"", reply=inbox)
        deadline = loop.time() + within.total_seconds()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            wait = min(left, settle.total_seconds()) if out else left
            try:
                async with asyncio.timeout(wait):
                    msg = await replies.get()
            except TimeoutError:
                break
            try:
                out.append(decode(msg.data, WorkersReply, msg.subject))
            except DecodeError as exc:
                log.warning("ignored malformed workers reply", error=exc.reason)
    finally:
        await sub.unsubscribe()
    out.sort(key=lambda r: r.process)
    return out
