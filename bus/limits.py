"""How much the bus accepts and keeps: event size, stream bytes and ages, replicas, consumers."""

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
        stream_replicas: Replicas of every stream and key-value bucket (1 to
            5): 1 for one nats-server, 3 for a JetStream cluster of three or
            more, so that the streams outlive one server going away.
        max_consumers: How many consumers each stream admits. Set on every
            stream explicitly: nats-server otherwise caps a stream at its
            default (1,000 on 2.15), and a value <= 0 would mean that
            default, not "unlimited".
    """

    max_event_size: int = 256 * KiB
    # JetStream reserves a file stream's max_bytes in its store up front:
    # defaults a modest server can grant, raised by operators who want more.
    events_max_bytes: int = 256 * MiB
    dlq_max_age: timedelta = timedelta(days=30)
    dlq_max_bytes: int = 64 * MiB
    stream_replicas: int = 1
    # One tick consumer per periodic worker and one event consumer per event
    # worker share a stream: room for ten thousand workers by default.
    max_consumers: int = 10_000
