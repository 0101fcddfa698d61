"""JSON encoding and decoding of bus messages with msgspec."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from ctrlplane.bus.errors import DecodeError
from ctrlplane.bus.messages import DeadLetter, Event, Tick
from ctrlplane.text import clip

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

MAX_DEPTH = 64
"""How deeply arrays and objects may nest in a payload from NATS.

msgspec has no depth option and recurses: past Python's recursion limit it
raises RecursionError, and whatever handles the decoded value later (an
encoder, a worker) may hit the limit with less stack to spare. So depth is
checked on the raw bytes first and refused with a reason.
"""

MAX_TICK_SIZE = 4096
"""The largest tick payload accepted: ours are about 200 bytes."""

MAX_REASON = 4096
"""Characters of a dead letter's reason that are kept (the rest is marked cut)."""

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


def decode_event_msg(msg: Msg, *, max_size: int | None = None) -> Event:
    """Decode the :class:`Event` in ``msg``, deriving a missing id or time from it.

    The same as ``decode_event(msg.data, msg.subject, ...)`` with the
    message's :func:`stream_position`, read only when the payload lacks an
    ``id`` or a ``time`` (the hot path never parses the reply subject).
    A payload larger than ``max_size`` bytes is refused before it is parsed.
    """
    data = msg.data
    if max_size is not None and len(data) > max_size:
        raise DecodeError(
            msg.subject, f"event of {len(data)} bytes exceeds the maximum event size ({max_size})"
        )
    inbound = _decode_inbound(data, msg.subject)
    if inbound.id is UNSET or inbound.time is UNSET:
        stream, seq, time = stream_position(msg)
        return _complete(inbound, stream, seq, time)
    return _complete(inbound, None, None, None)


def decode_tick(payload: bytes, subject: str = "") -> Tick:
    """Decode a :class:`Tick`, raising :class:`DecodeError` with the reason.

    A payload over :data:`MAX_TICK_SIZE` bytes or nested deeper than
    :data:`MAX_DEPTH` is refused before it is parsed.
    """
    if len(payload) > MAX_TICK_SIZE:
        raise DecodeError(
            subject, f"tick of {len(payload)} bytes exceeds the maximum tick size ({MAX_TICK_SIZE})"
        )
    _check_depth(payload, subject)
    try:
        return _tick_decoder.decode(payload)
    except Exception as exc:  # any failure on untrusted input is a decode failure
        raise DecodeError(subject, _reason(exc)) from None


def decode(payload: bytes, type_: type[T], subject: str = "") -> T:
    """Decode ``payload`` as ``type_``, raising :class:`DecodeError` with the reason.

    A payload nested deeper than :data:`MAX_DEPTH` is refused before it is parsed.
    """
    _check_depth(payload, subject)
    try:
        return msgspec.json.decode(payload, type=type_)
    except Exception as exc:
        raise DecodeError(subject, _reason(exc)) from None


def _decode_inbound(payload: bytes, subject: str) -> _InboundEvent:
    # _check_depth's first test inlined: this is the hot path of every event.
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH:
        _check_depth(payload, subject)
    try:
        return _event_decoder.decode(payload)
    except Exception as exc:  # RecursionError on deep nesting, not only msgspec's errors
        raise DecodeError(subject, _reason(exc)) from None


# A JSON string, escapes included. The closing quote is optional and the
# quantifiers possessive so that an unterminated string is one linear match to
# the end, never a rescan from every later quote (a quadratic trap).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(payload: bytes) -> int:
    """How deeply arrays and objects nest in ``payload``, brackets inside strings aside.

    Linear in the payload's size; meant for untrusted bytes, so it never
    raises, whatever they hold (an unterminated string runs to the end).
    """
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _check_depth(payload: bytes, subject: str) -> None:
    # No more openers than the limit cannot nest past it: the common case
    # costs two scans in C and no parse.
    if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH:
        return
    depth = nesting_depth(payload)
    if depth > MAX_DEPTH:
        raise DecodeError(subject, f"nested {depth} levels deep; at most {MAX_DEPTH} are accepted")


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
    stream: str | None = None,
    max_bytes: int | None = None,
) -> DeadLetter:
    """Build a :class:`DeadLetter` that keeps ``payload``, text or not.

    The reason is clipped to :data:`MAX_REASON` characters. When the letter
    would encode to more than ``max_bytes`` (the server's max_payload less
    room for headers), only a prefix of the payload is kept and the letter
    says so (``truncated``, ``size``); ``stream``, ``stream_seq`` and
    ``subject`` still point at the whole message.
    """
    reason = clip(reason, MAX_REASON)
    letter = _letter(worker, subject, reason, payload, attempts, stream_seq, stream, None)
    # base64 adds a third and JSON escapes up to six times: measure, never guess.
    if max_bytes is None or len(payload) <= max_bytes // 6 or len(encode(letter)) <= max_bytes:
        return letter
    keep = max_bytes // 2
    while True:
        letter = _letter(
            worker, subject, reason, payload[:keep], attempts, stream_seq, stream, len(payload)
        )
        if keep == 0 or len(encode(letter)) <= max_bytes:
            return letter
        keep //= 2


def _letter(
    worker: str,
    subject: str,
    reason: str,
    payload: bytes,
    attempts: int,
    stream_seq: int | None,
    stream: str | None,
    size: int | None,
) -> DeadLetter:
    text: str | None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A prefix may end inside a character: keep the text before it.
        cut = size is not None and exc.reason == "unexpected end of data"
        text = payload[: exc.start].decode("utf-8") if cut else None
    return DeadLetter(
        worker=worker,
        subject=subject,
        reason=reason,
        payload=text,
        payload_base64=None if text is not None else base64.b64encode(payload).decode("ascii"),
        attempts=attempts,
        stream=stream,
        stream_seq=stream_seq,
        truncated=size is not None,
        size=len(payload) if size is None else size,
    )
