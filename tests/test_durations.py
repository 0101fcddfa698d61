"""Tests for ctrlplane.durations: every accepted and rejected form, and the round trip."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from ctrlplane.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("90d", timedelta(days=90)),
        ("7d", timedelta(days=7)),
        ("250us", timedelta(microseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d12h", timedelta(days=2, hours=12)),
        ("1m30s", timedelta(minutes=1, seconds=30)),
        ("1s500ms", timedelta(seconds=1, milliseconds=500)),
        ("1d2h3m4s5ms6us", timedelta(1, 2 * 3600 + 3 * 60 + 4, 5006)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("0.5s", timedelta(milliseconds=500)),
        ("1.1h", timedelta(hours=1, minutes=6)),
        ("0s", timedelta(0)),
        ("30", timedelta(seconds=30)),
        ("2.5", timedelta(seconds=2.5)),
        ("0", timedelta(0)),
        ("  30s\n", timedelta(seconds=30)),
        (30, timedelta(seconds=30)),
        (2.5, timedelta(seconds=2.5)),
        (0, timedelta(0)),
        (0.0, timedelta(0)),
        (timedelta(minutes=3), timedelta(minutes=3)),
        (timedelta(0), timedelta(0)),
    ],
)
def test_parse_accepts(text: str | int | float | timedelta, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_parse_rounds_to_the_nearest_microsecond() -> None:
    assert parse_duration("0.0000015s") == timedelta(microseconds=2)
    assert parse_duration("0.0000014s") == timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "such as 30s"),
        ("   ", "such as 30s"),
        ("abc", "such as 30s"),
        ("s", "such as 30s"),
        ("h1", "such as 30s"),
        ("1h30", "such as 30s"),
        (".5s", "such as 30s"),
        ("1.s", "such as 30s"),
        ("1..5s", "such as 30s"),
        ("1e3", "unknown unit 'e'"),
        ("+5s", "such as 30s"),
        ("5x", "unknown unit 'x'"),
        ("5min", "unknown unit 'min'"),
        ("30sec", "unknown unit 'sec'"),
        ("2w", "unknown unit 'w'"),
        ("30S", "unknown unit 'S'"),
        ("1H", "unknown unit 'H'"),
        ("5 s", "unknown unit ' s'"),
        ("1h1h", "largest first"),
        ("30m1h", "largest first"),
        ("1s1d", "largest first"),
        ("-5s", "negative"),
        ("-5", "negative"),
        (" -1h", "negative"),
        (-1, "negative"),
        (-0.5, "negative"),
        (timedelta(seconds=-1), "negative"),
        (float("nan"), "such as 30s"),
        (float("inf"), "such as 30s"),
        ("1000000000d", "too large"),
        (10**20, "too large"),
        (1e20, "too large"),
    ],
)
def test_parse_rejects(text: str | int | float | timedelta, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration(text)
    message = str(caught.value)
    assert fragment in message
    assert repr(text) in message


@pytest.mark.parametrize(
    "text", ["5x", "abc", "", "-5s", "1h1h"], ids=["unit", "garbage", "empty", "neg", "order"]
)
def test_rejection_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration(text)
    # Each message shows at least one accepted spelling to copy.
    assert any(example in str(caught.value) for example in ("30s", "1h30m"))


def test_garbage_message_matches_the_documented_wording() -> None:
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration("abc")
    assert str(caught.value) == (
        "invalid duration 'abc': use a number with a unit such as 30s, 5m, 1h or 7d"
    )


@pytest.mark.parametrize("value", [True, False, None, [30], {"s": 30}])
def test_parse_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("td", "expected"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=60), "1m"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(days=90), "90d"),
        (timedelta(days=7), "7d"),
        (timedelta(seconds=1, milliseconds=500), "1s500ms"),
        (timedelta(microseconds=1), "1us"),
        (timedelta(days=1, microseconds=1), "1d1us"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "-5s"),
        (timedelta(minutes=-90), "-1h30m"),
    ],
)
def test_format(td: timedelta, expected: str) -> None:
    assert format_duration(td) == expected


@pytest.mark.parametrize(
    "text", ["500ms", "30s", "5m", "1h", "1h30m", "90d", "2d12h", "1s500ms", "1d1us", "0s"]
)
def test_canonical_text_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_every_duration_round_trips() -> None:
    rng = random.Random(20240501)
    samples = [timedelta(microseconds=rng.randrange(0, 10**15)) for _ in range(2000)]
    samples += [timedelta.max, timedelta(0), timedelta(days=1), timedelta(microseconds=999)]
    for td in samples:
        assert parse_duration(format_duration(td)) == td, td
