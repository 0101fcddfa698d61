"""Decoding untrusted payloads (issue 9): every failure is a DecodeError with a
reason, depth is bounded before parsing, and a dead letter always fits."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.msg import Msg

from ctrlplane.bus import (
    DeadLetter,
    DecodeError,
    Event,
    Tick,
    decode,
    decode_event,
    decode_tick,
    encode,
)
from ctrlplane.bus.codec import (
    MAX_DEPTH,
    MAX_TICK_SIZE,
    dead_letter,
    decode_event_msg,
    nesting_depth,
)
from ctrlplane.text import clip

TICK = Tick(worker="w", slot=7, scheduled=datetime(2026, 1, 1, tzinfo=UTC), interval=timedelta(1))


def _deep(levels: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * levels + close * levels


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 2_000, 200_000])
def test_deep_nesting_in_an_event_is_refused_with_a_reason(levels: int) -> None:
    payload = b'{"type":"a","source":"s","data":{"x":' + _deep(levels) + b"}}"
    with pytest.raises(DecodeError, match="levels deep") as caught:
        decode_event(payload, "t.events.a")
    assert caught.value.subject == "t.events.a"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1_500])
def test_deep_nesting_in_a_tick_is_refused_before_parsing(levels: int) -> None:
    # An unknown field: msgspec would skip it, recursing all the way down.
    with pytest.raises(DecodeError, match="levels deep"):
        decode_tick(encode(TICK)[:-1] + b',"x":' + _deep(levels) + b"}")


def test_a_tick_larger_than_any_tick_is_refused() -> None:
    payload = encode(TICK)[:-1] + b',"x":"' + b"a" * MAX_TICK_SIZE + b'"}'
    with pytest.raises(DecodeError, match="maximum tick size"):
        decode_tick(payload)


def test_decode_refuses_deep_nesting_too() -> None:
    with pytest.raises(DecodeError, match="levels deep"):
        decode(_deep(MAX_DEPTH + 1), list)


def test_nesting_up_to_the_limit_decodes() -> None:
    nested: object = []
    for _ in range(MAX_DEPTH - 3):
        nested = [nested]
    event = Event(type="a", source="s", data={"x": nested})
    assert decode_event(encode(event)).data == {"x": nested}


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[{" * 500 + '\\"' + "]}" * 10
    event = Event(type="a", source="s", data={"text": text})
    assert decode_event(encode(event)).data["text"] == text
    assert nesting_depth(encode(event)) == 2


@pytest.mark.parametrize(
    ("payload", "depth"),
    [
        (b"", 0),
        (b"[]", 1),
        (b'[["]"]]', 2),
        (b'["\\\\", [1]]', 2),  # an escaped backslash ends before the quote
        (b'["unterminated [[[[', 1),
        (b"]]]][[", 2),
        (b'"\\', 0),
    ],
)
def test_nesting_depth_of_odd_bytes(payload: bytes, depth: int) -> None:
    assert nesting_depth(payload) == depth


def test_nesting_depth_is_linear_on_unterminated_strings() -> None:
    # A quadratic scan would take minutes on this; a linear one milliseconds.
    payload = b'"\\"' * 100_000 + b'["' * 100_000
    started = time.perf_counter()
    nesting_depth(payload)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe{",
        b'{"type":"a","source":"s","time":"2026-01-01T00:00:00"}',
        b'{"type":"a","source":"s","data":{"n":1e999999}}',
        b'{"type":"a","source":"s","data":{"n":' + b"9" * 5_000 + b"}}",
        b'{"type":"a","source":"s","data":{"s":"\\ud800"}}',
        b"[" * 70 + b"]" * 70,
        b"null",
    ],
)
def test_every_failure_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(payload)


def test_an_event_over_the_size_limit_is_refused_before_parsing() -> None:
    payload = encode(Event(type="a", source="s", data={"s": "x" * 2_000}))
    msg = Msg(_client=None, subject="t.events.a", data=payload)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="maximum event size"):
        decode_event_msg(msg, events_head="t.events.", max_size=1_000)
    decoded = decode_event_msg(msg, events_head="t.events.", max_size=len(payload))
    assert decoded.data["s"] == "x" * 2_000


def _letter(payload: bytes, max_bytes: int | None) -> DeadLetter:
    return dead_letter(
        worker="w",
        subject="t.events.a",
        reason="r",
        payload=payload,
        attempts=1,
        stream="T_EVENTS",
        stream_seq=9,
        max_bytes=max_bytes,
    )


@pytest.mark.parametrize(
    "payload",
    [b"x" * 300_000, b"\x00" * 300_000, bytes(range(256)) * 1_200, "é".encode() * 150_000],
)
def test_a_dead_letter_too_large_for_nats_keeps_a_prefix_and_says_so(payload: bytes) -> None:
    letter = _letter(payload, 64 * 1024)
    assert len(encode(letter)) <= 64 * 1024
    assert letter.truncated and letter.size == len(payload)
    assert (letter.stream, letter.stream_seq) == ("T_EVENTS", 9)
    kept = (
        letter.payload.encode()
        if letter.payload is not None
        else base64.b64decode(letter.payload_base64 or "")
    )
    assert kept and payload.startswith(kept)


def test_a_dead_letter_that_fits_is_whole() -> None:
    letter = _letter(b"\xff" * 1000, 64 * 1024)
    assert not letter.truncated
    assert base64.b64decode(letter.payload_base64 or "") == b"\xff" * 1000


def test_a_dead_letter_reason_is_clipped() -> None:
    letter = dead_letter(
        worker="w",
        subject="s",
        reason="e" * 100_000,
        payload=b"{}",
        attempts=1,
        stream_seq=None,
    )
    assert len(letter.reason) < 5_000 and letter.reason.endswith("[cut 95904 characters]")
    assert clip("short", 10) == "short"
