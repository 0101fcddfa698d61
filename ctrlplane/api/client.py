"""The asking side of the control API: one answer, or every process's (``workers``)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TypeVar

import nats.errors
import structlog
from nats.aio.msg import Msg

from ctrlplane.actors.control import WorkersReply, WorkersRequest
from ctrlplane.api.errors import CODE_HEADER, MESSAGE_HEADER, ApiError, BadRequestError, ErrorBody
from ctrlplane.api.wire import decode_body, encode_body
from ctrlplane.bus.connection import Bus
from ctrlplane.errors import CtrlplaneError

__all__ = ["RemoteError", "list_workers", "remote_error", "request"]

log = structlog.get_logger("ctrlplane.api")

R = TypeVar("R")


class RemoteError(ApiError):
    """An error answer of the control API, as the asking side sees it.

    Attributes:
        code: From the ``Nats-Service-Error-Code`` header.
        message: From the body's ``error.message`` (the header when the body has none).
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ApiError], tuple[int, str]]:  # type: ignore[override]
        return type(self), (self.code, self.message)


def remote_error(msg: Msg) -> RemoteError | None:
    """The error an answer carries (micro headers, JSON body), or None for a success."""
    headers = msg.headers or {}
    if MESSAGE_HEADER not in headers and CODE_HEADER not in headers:
        return None
    try:
        code = int(headers.get(CODE_HEADER, "500"))
    except ValueError:
        code = 500
    message = headers.get(MESSAGE_HEADER, "")
    # Another implementation may answer with the headers only.
    with contextlib.suppress(BadRequestError):
        message = decode_body(msg.data, ErrorBody, msg.subject).error.message
    return RemoteError(code, message or f"error {code}")


async def request(
    bus: Bus, endpoint: str, body: object, reply_type: type[R], *, within: float
) -> R:
    """Send a request to ``<prefix>.api.v1.<endpoint>`` and decode its answer.

    Raises:
        RemoteError: the service answered with an error (its message is the text).
        CtrlplaneError: no process answered in time, or the answer is undecodable.
    """
    subject = bus.subjects.api(endpoint)
    try:
        msg = await bus.nc.request(subject, encode_body(body), timeout=within)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise CtrlplaneError(
            f"no ctrlplane process answered on {subject}: is `ctrlplane run` running?"
        ) from None
    error = remote_error(msg)
    if error is not None:
        raise error
    try:
        return decode_body(msg.data, reply_type, subject)
    except BadRequestError as exc:  # whoever answered is untrusted too
        raise CtrlplaneError(f"undecodable answer on {subject}: {exc.reason}") from None


async def list_workers(
    bus: Bus,
    *,
    within: timedelta = timedelta(seconds=2),
    settle: timedelta = timedelta(milliseconds=300),
) -> list[WorkersReply]:
    """Ask every process on the bus for its workers (``<prefix>.api.v1.workers``).

    Gathers replies until ``settle`` passes with no new one after the first,
    or ``within`` in all; an empty list means no process answered.
    """
    nc = bus.nc
    subject = bus.subjects.api("workers")
    inbox = nc.new_inbox()
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        replies.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=collect)
    out: list[WorkersReply] = []
    loop = asyncio.get_running_loop()
    try:
        await nc.publish(subject, encode_body(WorkersRequest()), reply=inbox)
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
            error = remote_error(msg)
            if error is not None:
                log.warning("ignored workers error answer", code=error.code, error=error.message)
                continue
            try:
                out.append(decode_body(msg.data, WorkersReply, subject))
            except BadRequestError as exc:
                log.warning("ignored malformed workers answer", error=exc.reason)
    finally:
        await sub.unsubscribe()
    out.sort(key=lambda r: r.process)
    return out
