"""How much the bus accepts and keeps: event size, stream bytes and ages."""

from __future__ import annotations

from datetime import timedelta

from msgspec import Struct

KiB = 1024
MiB = 1024 * KiB


class BusLimits(Struct, frozen=True, kw_only=True):
    """Bounds on what travels on and stays in the bus's streams.

    Attributes:
        max_event_size: The largest event payload, in bytes, that is
            published or handled; a larger one from another client is
            dead-lettered with the reason, and ``publish_event`` refuses one.
            Never more than the server's ``max_payload``.
        events_max_bytes: The events stream's size limit; past it the
            oldest events are discarded.
        dlq_max_age: How long dead letters are kept.
        dlq_max_bytes: The dead-letter stream's size limit; past it the
            oldest letters are discarded.
    """

    max_event_size: int = 256 * KiB
    # JetStream reserves a file stream's max_bytes in its store up front:
    # defaults a modest server can grant, raised by operators who want more.
    events_max_bytes: int = 256 * MiB
    dlq_max_age: timedelta = timedelta(days=30)
    dlq_max_bytes: int = 64 * MiB
