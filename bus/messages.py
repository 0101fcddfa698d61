"""The messages that travel on NATS, as msgspec Structs encoded as JSON.

JSON keeps every message readable by any NATS client in any language; the
field names below are the wire names and are chosen on purpose.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

SPECVERSION: Literal["1.0"] = "1.0"
"""The CloudEvents version of our events."""

JSON: Literal["application/json"] = "application/json"
"""The ``datacontenttype`` of our events, the only one accepted inbound."""


NonEmpty = Annotated[str, Meta(min_length=1)]


def _now() -> datetime:
    return datetime.now(UTC)


class Event(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A domain event: a CloudEvents 1.0 event in JSON structured mode,
    published on ``<prefix>.events.<type>``.

    ``(source, id)`` identifies an event. The field names below are the
    CloudEvents attribute names on the wire, except :attr:`instance_id`,
    written as the extension attribute ``instanceid`` (CloudEvents allows
    only lowercase letters and digits in attribute names). An attribute
    with no value is left out, never written as null.

    Attributes:
        specversion: Always ``"1.0"``, always written.
        id: Id of the event, unique per source. A string, because other
            services publish events with their own id schemes.
        source: Who published it (a worker name, a service name).
        type: Dot-separated event type, e.g. ``health.failed``; the subject's
            tail must be this type.
        time: When it happened; RFC 3339 with a UTC offset on the wire (a
            time without one is refused at decode).
        datacontenttype: Always ``"application/json"``, always written.
        subject: What the event is about within its source, if anything:
            the instance name for instance, health and deploy events, the
            hostname for domain and cert events, the worker for
            ``worker.failed``.
        instance_id: The instance the event is about, if any (``instanceid``
            on the wire).
        data: Event-specific payload, a JSON object (``{}`` when empty).
    """

    # A default_factory, not a default: omit_defaults leaves out a field equal
    # to its default, and these two must always be written.
    specversion: Literal["1.0"] = field(default_factory=lambda: SPECVERSION)
    id: NonEmpty = field(default_factory=lambda: uuid.uuid4().hex)
    source: NonEmpty
    type: NonEmpty
    time: Annotated[datetime, Meta(tz=True)] = field(default_factory=_now)
    datacontenttype: Literal["application/json"] = field(default_factory=lambda: JSON)
    subject: str | None = None
    instance_id: str | None = field(default=None, name="instanceid")
    # Not default_factory=dict: omit_defaults would then leave an empty data
    # out, and consumers should not have to tell {} from absent.
    data: dict[str, Any] = field(default_factory=lambda: {})  # noqa: PIE807


class Tick(Struct, frozen=True, kw_only=True):
    """A tick: worker ``worker`` is due for slot ``slot``.

    Attributes:
        worker: The periodic worker the tick is for.
        slot: Slot number: ``floor((t - offset) / interval)``; for a worker
            on a cron schedule, the occurrence's epoch second.
        scheduled: The start time of the slot, the time the run was due.
        interval: The worker's interval when the tick was made; for a cron
            worker, the time from this occurrence to the next (so a tick
            older than it has a newer one due, and coalesces).
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
        node: For a node-scoped worker, the node whose run gave up on it
            (a replay goes back to that node's runs).
        replay_of: When the message was a replay of an earlier dead letter,
            that letter's id (it was removed once the replay was kept).
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
    node: str | None = None
    replay_of: int | None = None
