"""The NATS side of ctrlplane: connection, subjects, streams and messages."""

from ctrlplane.bus.codec import decode, decode_event, decode_tick, encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import (
    BusError,
    DecodeError,
    EventTooLargeError,
    InvalidEventError,
    NotConnectedError,
    PublishError,
    ServerError,
)
from ctrlplane.bus.limits import BusLimits
from ctrlplane.bus.messages import DeadLetter, Event, Tick
from ctrlplane.bus.subjects import Subjects

__all__ = [
    "Bus",
    "BusError",
    "BusLimits",
    "DeadLetter",
    "DecodeError",
    "Event",
    "EventTooLargeError",
    "InvalidEventError",
    "NotConnectedError",
    "PublishError",
    "ServerError",
    "Subjects",
    "Tick",
    "decode",
    "decode_event",
    "decode_tick",
    "encode",
]
