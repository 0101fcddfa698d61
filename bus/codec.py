"""JSON encoding and decoding of bus messages with msgspec."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import msgspec
import structlog
from msgspec import Meta, Struct

from ctrlplane.bus.errors import DecodeError
from ctrlplane.bus.messages import JSON, SPECVERSION, DeadLetter, Event, Tick
from ctrlplane.text import clip

if TYPE_CHECKING:
    from nats.aio.msg import Msg

T = TypeVar("T")

log = structlog.get_logger("ctrlplane.bus")


class _InboundEvent(Struct, frozen=True, kw_only=True):
    """An :class:`Event` as other clients may send it: a CloudEvents 1.0
    event, or the envelope of the previous release (no ``specversion``).

    Every optional attribute is ``None`` whether absent or an explicit
    ``null`` (CloudEvents: null means unset); :func:`_complete` then applies
    the rules of each envelope. ``time`` must carry a UTC offset: a naive
    time is ambiguous, and comparing it with our aware times raises later.
    """

    specversion: str | None = None
    id: Annotated[str, Meta(min_length=1)] | None = None
    source: Annotated[str, Meta(min_length=1)]
    type: Annotated[str, Meta(min_length=1)]
    time: Annotated[datetime, Meta(tz=True)] | None = None
    datacontenttype: str | None = None
    subject: str | None = None
    instanceid: str | None = None
    # The previous envelope's name of instanceid.
    instance_id: str | None = None
    data: dict[str, Any] | None = None
    # Only to refuse it with a reason: binary data has no place in our events.
    data_base64: Any = None


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
    events_head: str | None = None,
    data_types: Mapping[str, type[Any]] | None = None,
    stream: str | None = None,
    stream_seq: int | None = None,
    stream_time: datetime | None = None,
) -> Event:
    """Decode an :class:`Event`, raising :class:`DecodeError` with the reason.

    A CloudEvents 1.0 event (``specversion`` present) must be version 1.0 and
    have a non-empty ``id``, ``source`` and ``type``, a ``time`` with a UTC
    offset, no ``datacontenttype`` but ``application/json``, and a ``data``
    that is a JSON object (absent or null: ``{}``). ``data_base64`` is refused.

    The envelope of the previous release (no ``specversion``, ``instance_id``)
    is still accepted, with a warning logged once per source: a missing
    ``id`` becomes ``"<stream>-<stream_seq>"`` and a missing ``time``
    becomes ``stream_time`` when those are given, so every delivery of one
    stored message, to every worker, decodes to the same event; without
    them (core NATS) a missing id is a random one and a missing time is now.

    Args:
        payload: The message's bytes.
        subject: The subject it arrived on.
        events_head: The events subjects' head, ``<prefix>.events.``; when
            given, ``subject`` must be exactly the head followed by the
            event's ``type``. None checks nothing (a reader of stored events).
        data_types: Event types whose ``data`` must convert (strictly) to the
            Struct given; the event keeps ``data`` as the mapping it was.
    """
    event = _complete(_decode_inbound(payload, subject), subject, stream, stream_seq, stream_time)
    return _checked(event, subject, events_head, data_types)


def decode_event_msg(
    msg: Msg,
    *,
    events_head: str | None,
    data_types: Mapping[str, type[Any]] | None = None,
    max_size: int | None = None,
) -> Event:
    """Decode the :class:`Event` in ``msg``, deriving a missing id or time from it.

    The same as ``decode_event(msg.data, msg.subject, ...)`` with the
    message's :func:`stream_position`, read only when a previous-release
    envelope lacks an ``id`` or a ``time`` (the hot path never parses the
    reply subject). A payload larger than ``max_size`` bytes is refused
    before it is parsed.
    """
    data = msg.data
    subject = msg.subject
    if max_size is not None and len(data) > max_size:
        raise DecodeError(
            subject, f"event of {len(data)} bytes exceeds the maximum event size ({max_size})"
        )
    inbound = _decode_inbound(data, subject)
    if inbound.specversion is None and (inbound.id is None or inbound.time is None):
        stream, seq, time = stream_position(msg)
        event = _complete(inbound, subject, stream, seq, time)
    else:
        event = _complete(inbound, subject, None, None, None)
    return _checked(event, subject, events_head, data_types)


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
    subject: str,
    stream: str | None,
    stream_seq: int | None,
    stream_time: datetime | None,
) -> Event:
    if inbound.data_base64 is not None:
        raise DecodeError(
            subject, "data_base64 is refused: an event's data must be a JSON object in data"
        )
    data = inbound.data if inbound.data is not None else {}
    if inbound.specversion is not None:
        return _cloudevent(inbound, subject, data)
    # The previous release's envelope.
    _warn_legacy(inbound.source)
    id_ = inbound.id
    if id_ is None:
        id_ = f"{stream}-{stream_seq}" if stream and stream_seq is not None else uuid.uuid4().hex
    time = inbound.time
    if time is None:
        time = stream_time if stream_time is not None else datetime.now(UTC)
    return Event(
        id=id_,
        source=inbound.source,
        type=inbound.type,
        time=time,
        subject=inbound.subject,
        instance_id=inbound.instance_id,
        data=data,
    )


def _cloudevent(inbound: _InboundEvent, subject: str, data: dict[str, Any]) -> Event:
    if inbound.specversion != SPECVERSION:
        raise DecodeError(
            subject,
            f"specversion {inbound.specversion!r} is not supported: "
            f"only CloudEvents {SPECVERSION} is",
        )
    if inbound.id is None:
        raise DecodeError(subject, "id is required (a non-empty string)")
    if inbound.time is None:
        raise DecodeError(
            subject, "time is required (RFC 3339 with a UTC offset, e.g. 2026-11-30T06:34:33Z)"
        )
    if inbound.datacontenttype is not None and inbound.datacontenttype != JSON:
        raise DecodeError(
            subject,
            f"datacontenttype {inbound.datacontenttype!r} is refused: "
            f"only {JSON} (or none) is accepted",
        )
    return Event(
        id=inbound.id,
        source=inbound.source,
        type=inbound.type,
        time=inbound.time,
        subject=inbound.subject,
        instance_id=inbound.instanceid,
        data=data,
    )


def _checked(
    event: Event,
    subject: str,
    events_head: str | None,
    data_types: Mapping[str, type[Any]] | None,
) -> Event:
    if events_head is not None and subject != events_head + event.type:
        raise DecodeError(
            subject,
            f"type {event.type!r} does not match the subject {subject!r} "
            f"(expected {events_head}{event.type})",
        )
    if data_types is not None:
        cls = data_types.get(event.type)
        if cls is not None:
            try:
                msgspec.convert(event.data, cls)
            except msgspec.ValidationError as exc:
                raise DecodeError(
                    subject, f"data of a {event.type} event is not a {cls.__name__}: {exc}"
                ) from None
    return event


_LEGACY_WARNED: set[str] = set()
_LEGACY_WARN_MAX = 1024
"""Sources warned about, at most: the set holds names taken from the wire."""


def _warn_legacy(source: str) -> None:
    if source in _LEGACY_WARNED or len(_LEGACY_WARNED) >= _LEGACY_WARN_MAX:
        return
    _LEGACY_WARNED.add(source)
    log.warning(
        "event in the previous envelope (no specversion); it is accepted until the next "
        "release: publish CloudEvents 1.0 (see README, Events)",
        source=source,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError) and "timezone component" in str(exc):
        return f"time has no UTC offset (write it as in 2026-11-30T06:34:33Z): {exc}"
    if isinstance(exc, msgspec.ValidationError) and str(exc).endswith("at `$.data`"):
        return (
            "data must be a JSON object (an event's data is a mapping, for every event "
            f"type; wrap another value in an object): {exc}"
        )
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
