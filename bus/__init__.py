"""The NATS side of ctrlplane: connection, subjects, streams and messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.bus.codec import (
        decode,
        decode_event,
        decode_tick,
        encode,
    )
    from ctrlplane.bus.connection import Bus
    from ctrlplane.bus.errors import (
        BusError,
        ConsumerLimitError,
        DecodeError,
        EventTooLargeError,
        InvalidEventError,
        NotConnectedError,
        PublishError,
        ReplicasError,
        ServerError,
    )
    from ctrlplane.bus.limits import BusLimits
    from ctrlplane.bus.messages import (
        DeadLetter,
        Event,
        Tick,
    )
    from ctrlplane.bus.subjects import Subjects

__all__ = [
    "Bus",
    "BusError",
    "BusLimits",
    "ConsumerLimitError",
    "DeadLetter",
    "DecodeError",
    "Event",
    "EventTooLargeError",
    "InvalidEventError",
    "NotConnectedError",
    "PublishError",
    "ReplicasError",
    "ServerError",
    "Subjects",
    "Tick",
    "decode",
    "decode_event",
    "decode_tick",
    "encode",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "decode": "ctrlplane.bus.codec",
    "decode_event": "ctrlplane.bus.codec",
    "decode_tick": "ctrlplane.bus.codec",
    "encode": "ctrlplane.bus.codec",
    "Bus": "ctrlplane.bus.connection",
    "BusError": "ctrlplane.bus.errors",
    "ConsumerLimitError": "ctrlplane.bus.errors",
    "DecodeError": "ctrlplane.bus.errors",
    "EventTooLargeError": "ctrlplane.bus.errors",
    "InvalidEventError": "ctrlplane.bus.errors",
    "NotConnectedError": "ctrlplane.bus.errors",
    "PublishError": "ctrlplane.bus.errors",
    "ReplicasError": "ctrlplane.bus.errors",
    "ServerError": "ctrlplane.bus.errors",
    "BusLimits": "ctrlplane.bus.limits",
    "DeadLetter": "ctrlplane.bus.messages",
    "Event": "ctrlplane.bus.messages",
    "Tick": "ctrlplane.bus.messages",
    "Subjects": "ctrlplane.bus.subjects",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
