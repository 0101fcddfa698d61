"""JSON encoding and decoding of bus messages with msgspec."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from ctrlplane.bus.errors import DecodeError
from ctrlplane.bus.messages import DeadLetter, Event, Tick

if TYPE_CHECKING:
    from nats.aio.msg import Msg

T = TypeVar("T")


class _InboundEvent(Struct, frozen=True, kw_only=True):
    """An :class:`Event` as other clients may send it.

    ``id`` and ``time`` may be absent (they are then derived from the
    JetStream message, see :func:`decode_event`); UNSET rather than None keeps
    an explicit ``null`` refused. ``time`` must carry a UTC offset: a naive
    time is ambiguous, and comparing it with our aware times raises later.
    """

    id: str | UnsetType = UNSET
    type: str
    source: str
    time: Annotated[datetime, Meta(tz=True)] | UnsetType = UNSET
    instance_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class StreamPosition(NamedTuple):
    """Where a message sits in JetStream; all None when it did not come from one."""

    stream: str | None
    seq: int | None
    time: datetime | None


_NOWHERE = StreamPosition(None, None, None)

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(_InboundEvent)
_tick_decoder = msgspec.json.Decoder(Tick)


def encode(message: Any) -> bytes:
    """Encode a message Struct (or any msgspec-encodable value) as JSON."""
    return _encoder.encode(message)


def stream_position(msg: Msg) -> StreamPosition:
    """The stream, stream sequence and stream timestamp of a JetStream message.

    Never raises: a core NATS message, or a reply subject nats-py cannot
    parse, gives all None. It parses the whole reply subject, so call it only
    when it is needed (``decode_event_msg`` does).
    """
    try:
        meta = msg.metadata
        return StreamPosition(str(meta.stream), int(meta.sequence.stream), meta.timestamp)
    except Exception:  # nats-py raises several kinds on a malformed reply subject
        return _NOWHERE


def decode_event(
    payload: bytes,
    subject: str = "",
    *,
    stream: str | None = None,
    stream_seq: int | None = None,
    stream_time: datetime | None = None,
) -> Event:
    """Decode an :class:`Event`, raising :class:`DecodeError` with the reason.

    A ``time`` without a UTC offset is refused. A missing ``id`` becomes
    ``"<stream>-<stream_seq>"`` and a missing ``time`` becomes ``stream_time``
    when those are given, so every delivery of one stored message, to every
    worker, decodes to the same event; without them (core NATS) a missing id
    is a random one and a missing time is now.
    """
    return _complete(_decode_inbound(payload, subject), stream, stream_seq, stream_time)


def decode_event_msg(msg: Msg) -> Event:
    """Decode the :class:`Event` in ``msg``, deriving a missing id or time from it.

    The same as ``decode_event(msg.data, msg.subject, ...)`` with the
    message's :func:`stream_position`, read only when the payload lacks an
    ``id`` or a ``time`` (the hot path never parses the reply subject).
    """
    inbound = _decode_inbound(msg.data, msg.subject)
    if inbound.id is UNSET or inbound.time is UNSET:
        stream, seq, time = stream_position(msg)
        return _complete(inbound, stream, seq, time)
    return _complete(inbound, None, None, None)


def decode_tick(payload: bytes, subject: str = "") -> Tick:
    """Decode a :class:`Tick`, raising :class:`DecodeError` with the reason."""
    try:
        return _tick_decoder.decode(payload)
    except Exception as exc:  # any failure on untrusted input is a decode failure
        raise DecodeError(subject, _reason(exc)) from None


def decode(payload: bytes, type_: type[T], subject: str = "") -> T:
    """Decode ``payload`` as ``type_``, raising :class:`DecodeError` with the reason."""
    try:
        return msgspec.json.decode(payload, type=type_)
    except Exception as exc:
        raise DecodeError(subject, _reason(exc)) from None


def _decode_inbound(payload: bytes, subject: str) -> _InboundEvent:
    try:
        return _event_decoder.decode(payload)
    except Exception as exc:  # RecursionError on deep nesting, not only msgspec's errors
        raise DecodeError(subject, _reason(exc)) from None


def _complete(
    inbound: _InboundEvent,
    stream: str | None,
    stream_seq: int | None,
    stream_time: datetime | None,
) -> Event:
    id_ = inbound.id
    if isinstance(id_, UnsetType):
        id_ = f"{stream}-{stream_seq}" if stream and stream_seq is not None else uuid.uuid4().hex
    time = inbound.time
    if isinstance(time, UnsetType):
        time = stream_time if stream_time is not None else datetime.now(UTC)
    return Event(
        id=id_,
        type=inbound.type,
        source=inbound.source,
        time=time,
        instance_id=inbound.instance_id,
        data=inbound.data,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError) and "timezone component" in str(exc):
        return f"time has no UTC offset (write it as in 2026-11-30T06:34:33Z): {exc}"
    if isinstance(exc, msgspec.DecodeError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
