"""Decoding untrusted payloads (issue 9): every failure is a DecodeError with a
reason, depth is bounded before parsing, and a dead letter always fits."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from msgspec import Struct
from nats.aio.msg import Msg

from ctrlplane.bus import (
    DeadLetter,
    DecodeError,
    Event,
    Tick,
    codec,
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


# ------------------------------------------------ CloudEvents inbound (issue 12)

HEAD = "t.events."
CE = {
    "specversion": "1.0",
    "id": "e1",
    "source": "svc",
    "type": "job.done",
    "time": "2026-11-30T06:34:33Z",
    "data": {"n": 1},
}


class _Job(Struct):
    n: int


def _ce(**changes: object) -> bytes:
    fields = {**CE, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def test_a_cloudevent_decodes_with_its_subject_and_instanceid() -> None:
    payload = _ce(subject="web", instanceid="i-1", datacontenttype="application/json", ext="x")
    event = decode_event(
        payload, HEAD + "job.done", events_head=HEAD, data_types={"job.done": _Job}
    )
    assert (event.id, event.source, event.type, event.subject, event.instance_id) == (
        "e1",
        "svc",
        "job.done",
        "web",
        "i-1",
    )
    assert event.time == datetime(2026, 11, 30, 6, 34, 33, tzinfo=UTC)
    assert event.data == {"n": 1}  # kept as the mapping, not the Struct


def test_what_we_encode_decodes_to_the_same_event() -> None:
    event = Event(type="job.done", source="s", subject="x", instance_id="i-1", data={"n": 1})
    assert decode_event(encode(event), HEAD + "job.done", events_head=HEAD) == event


@pytest.mark.parametrize("data", [None, ...])
def test_data_null_or_absent_is_an_empty_object(data: object) -> None:
    assert decode_event(_ce(data=data)).data == {}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"type": "job.other"}, "type 'job.other' does not match the subject 't.events.job.done'"),
        ({"data": {"n": "one"}}, "data of a job.done event is not a _Job: Expected `int`"),
        ({"data": {}}, "data of a job.done event is not a _Job: Object missing required field"),
        ({"datacontenttype": "text/plain"}, "datacontenttype 'text/plain' is refused"),
        ({"data": ..., "data_base64": "aGk="}, "data_base64 is refused"),
        ({"specversion": "0.3"}, "specversion '0.3' is not supported"),
        ({"time": ...}, "time is required"),
        ({"time": None}, "time is required"),
        ({"time": "yesterday"}, "Invalid RFC3339 encoded datetime - at `$.time`"),
        ({"time": "2026-11-30T06:34:33"}, "no UTC offset"),
        ({"id": ...}, "id is required"),
        ({"id": ""}, "length >= 1 - at `$.id`"),
        ({"source": ""}, "length >= 1 - at `$.source`"),
        ({"data": [1, 2]}, "data must be a JSON object"),
        ({"data": "text"}, "data must be a JSON object"),
    ],
)
def test_a_bad_cloudevent_is_refused_with_the_reason(changes: dict[str, object], says: str) -> None:
    subject = HEAD + "job.done"
    with pytest.raises(DecodeError) as caught:
        decode_event(_ce(**changes), subject, events_head=HEAD, data_types={"job.done": _Job})
    assert says in caught.value.reason
    assert caught.value.subject == subject


def test_the_previous_envelope_is_accepted_with_one_warning_per_source() -> None:
    codec._LEGACY_WARNED.discard("old-svc")
    legacy = b'{"id": "l1", "type": "job.done", "source": "old-svc", "instance_id": "i-2"}'
    with structlog.testing.capture_logs() as logs:
        first = decode_event(legacy, HEAD + "job.done", events_head=HEAD)
        decode_event(legacy, HEAD + "job.done", events_head=HEAD)
    assert (first.id, first.instance_id, first.data) == ("l1", "i-2", {})
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["source"] == "old-svc"
    assert "next release" in warnings[0]["event"]
    # Its subject and type are checked all the same.
    with pytest.raises(DecodeError, match="does not match the subject"):
        decode_event(legacy, HEAD + "job.other", events_head=HEAD)
