"""JSON encoding and decoding of bus messages with msgspec."""

from __future__ import annotations

import base64
from typing import Any, TypeVar

import msgspec

from ctrlplane.bus.errors import DecodeError
from ctrlplane.bus.messages import DeadLetter, Event, Tick

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_tick_decoder = msgspec.json.Decoder(Tick)


def encode(message: Any) -> bytes:
    """Encode a message Struct (or any msgspec-encodable value) as JSON."""
    return _encoder.encode(message)


def decode_event(payload: bytes, subject: str = "") -> Event:
    """Decode an :class:`Event`, raising :class:`DecodeError` with the reason."""
    try:
        return _event_decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise DecodeError(subject, str(exc)) from None


def decode_tick(payload: bytes, subject: str = "") -> Tick:
    """Decode a :class:`Tick`, raising :class:`DecodeError` with the reason."""
    try:
        return _tick_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(subject, str(exc)) from None


def decode(payload: bytes, type_: type[T], subject: str = "") -> T:
    """Decode ``payload`` as ``type_``, raising :class:`DecodeError` with the reason."""
    try:
        return msgspec.json.decode(payload, type=type_)
    except msgspec.DecodeError as exc:
        raise DecodeError(subject, str(exc)) from None


def dead_letter(
    *,
    worker: str,
    subject: str,
    reason: str,
    payload: bytes,
    attempts: int,
    stream_seq: int | None,
) -> DeadLetter:
    """Build a :class:`DeadLetter` that keeps ``payload`` whole, text or not."""
    try:
        return DeadLetter(
            worker=worker,
            subject=subject,
            reason=reason,
            payload=payload.decode("utf-8"),
            attempts=attempts,
            stream_seq=stream_seq,
        )
    except UnicodeDecodeError:
        return DeadLetter(
            worker=worker,
            subject=subject,
            reason=reason,
            payload_base64=base64.b64encode(payload).decode("ascii"),
            attempts=attempts,
            stream_seq=stream_seq,
        )
