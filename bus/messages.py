"""The messages that travel on NATS, as msgspec Structs encoded as JSON.

JSON keeps every message readable by any NATS client in any language; the
field names below are the wire names and are chosen on purpose.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from msgspec import Meta, Struct, field


def _now() -> datetime:
    return datetime.now(UTC)


class Event(Struct, frozen=True, kw_only=True):
    """A domain event, published on ``<prefix>.events.<type>``.

    ``(source, id)`` identifies an event. On the wire ``id`` and ``time`` may
    be left out: a consumer of the events stream then derives them from the
    stored message (``<stream>-<sequence>`` and the stream's timestamp), so
    every delivery to every worker sees the same values.

    Attributes:
        id: Id of the event, unique per source. A string, because other
            services publish events with their own id schemes.
        type: Dot-separated event type, e.g. ``health.failed``.
        source: Who published it (a worker name, a service name).
        time: When it happened; RFC 3339 with a UTC offset on the wire (a
            time without one is refused at decode).
        instance_id: The instance the event is about, if any.
        data: Event-specific payload.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    type: str
    source: str
    time: Annotated[datetime, Meta(tz=True)] = field(default_factory=_now)
    instance_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Tick(Struct, frozen=True, kw_only=True):
    """A tick: worker ``worker`` is due for slot ``slot``.

    Attributes:
        worker: The periodic worker the tick is for.
        slot: Slot number: ``floor((t - offset) / interval)``.
        scheduled: The start time of the slot, the time the run was due.
        interval: The worker's interval when the tick was made.
        origin: The process that published the tick (any replica may).
        node: For a node-scoped worker, the node whose run it is (absent for
            a cluster-scoped one).
    """

    worker: str
    slot: int
    scheduled: datetime
    interval: timedelta
    origin: str = ""
    node: str | None = None

    @property
    def msg_id(self) -> str:
        """The JetStream de-duplication id: one tick per worker and slot (and
        node, for a node-scoped worker): ``gc/42``, ``telemetry/node-a/42``."""
        if self.node is None:
            return f"{self.worker}/{self.slot}"
        return f"{self.worker}/{self.node}/{self.slot}"


class DeadLetter(Struct, frozen=True, kw_only=True):
    """A message a worker could not handle, kept on ``<prefix>.dlq.<worker>``.

    Attributes:
        worker: The worker that gave up on the message.
        subject: The subject the message arrived on.
        reason: Why it was dead-lettered (decode error, last handler error).
        payload: The original payload, as text when it is UTF-8.
        payload_base64: The original payload in base64 when it is not UTF-8.
        attempts: How many deliveries were made.
        stream: The stream the message is kept in, if known.
        stream_seq: The sequence of the message in its stream, if known.
        truncated: Whether only a prefix of the payload is kept here (a
            whole copy would not fit in one NATS message); ``stream`` and
            ``stream_seq`` then say where the whole message was.
        size: The size of the original payload in bytes.
        time: When it was dead-lettered.
    """

    worker: str
    subject: str
    reason: str
    payload: str | None = None
    payload_base64: str | None = None
    attempts: int = 1
    stream: str | None = None
    stream_seq: int | None = None
    truncated: bool = False
    size: int | None = None
    time: datetime = field(default_factory=_now)
