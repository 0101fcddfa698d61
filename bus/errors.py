"""Errors raised by the bus: one base class, subclasses that carry what went wrong."""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error raised by ``ctrlplane.bus``."""


class NotConnectedError(BusError):
    """The bus was used before ``connect()`` or after ``close()``."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(f"bus: cannot {action}: connect the bus first")


class DecodeError(BusError):
    """A payload could not be decoded into the expected message type."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bus: undecodable message on {subject!r}: {reason}")


class InvalidEventError(BusError, ValueError):
    """An event whose type cannot be a NATS subject: nothing was published."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        super().__init__(
            f"bus: event type {event_type!r} is not valid: use dot-separated tokens of "
            "letters, digits, '-' and '_', such as 'health.failed'"
        )


class EventTooLargeError(BusError, ValueError):
    """An event larger than the bus's maximum event size: nothing was published."""

    def __init__(self, event_type: str, size: int, max_size: int) -> None:
        self.event_type = event_type
        self.size = size
        self.max_size = max_size
        super().__init__(
            f"bus: event {event_type!r} is {size} bytes, more than the maximum event size "
            f"of {max_size} bytes (Config.max_event_size): publish a reference to large data "
            "instead of the data"
        )


class PublishError(BusError):
    """A publish did not reach JetStream within its retry budget."""

    def __init__(self, subject: str, attempts: int, reason: str) -> None:
        self.subject = subject
        self.attempts = attempts
        self.reason = reason
        super().__init__(f"bus: publish to {subject!r} failed after {attempts} attempts: {reason}")


class ServerError(BusError):
    """The embedded nats-server could not be found, started or reached."""

    def __init__(self, reason: str, *, binary: str | None = None, log_tail: str = "") -> None:
        self.reason = reason
        self.binary = binary
        self.log_tail = log_tail
        where = f" ({binary})" if binary else ""
        tail = f"\n--- nats-server log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"bus: embedded nats-server{where}: {reason}{tail}")


class ReplicasError(BusError):
    """JetStream cannot keep a stream (or bucket) with as many replicas as asked."""

    def __init__(self, stream: str, replicas: int, reason: str) -> None:
        self.stream = stream
        self.replicas = replicas
        self.reason = reason
        super().__init__(
            f"bus: JetStream cannot keep {replicas} replicas of {stream}: {reason}; "
            "stream_replicas must not exceed the servers of the JetStream cluster "
            "(1 for a single nats-server)"
        )


class ConsumerLimitError(BusError):
    """A stream already holds as many consumers as its ``max_consumers`` admits."""

    def __init__(self, stream: str, durable: str) -> None:
        self.stream = stream
        self.durable = durable
        super().__init__(
            f"bus: stream {stream} refused consumer {durable!r}: its consumer limit "
            "(max_consumers) is reached; raise max_consumers, or run fewer workers "
            "under this subject prefix"
        )
