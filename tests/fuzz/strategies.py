"""Hypothesis strategies for what anyone on the NATS account may publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from ctrlplane.actors.spec import WorkerSpec

# JSON values of every kind, including the awkward ones: huge integers,
# lone surrogates, control characters.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value: Any) -> bytes:
    # json (not msgspec) so lone surrogates come out as \ud800 escapes.
    return json.dumps(value, ensure_ascii=True).encode()


deep_nesting = st.integers(min_value=60, max_value=5_000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n])
)

huge_strings = st.integers(min_value=100_000, max_value=900_000).map(
    lambda n: b'{"type":"fuzz.big","source":"s","data":{"s":"' + b"a" * n + b'"}}'
)

# Near NATS' 1 MiB max_payload and not text: a whole base64 copy cannot fit.
huge_binary = st.integers(min_value=700_000, max_value=1_000_000).map(lambda n: b"\xff" * n)

invalid_utf8 = st.binary(min_size=1, max_size=64).map(lambda b: b'{"type":"' + b + b'\xff"}')

# Odd but publishable event subject tails under ``<prefix>.events.fuzz.``.
event_tails = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=".*>"),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=4,
).map(".".join)

_times = st.sampled_from(
    ["2026-11-30T10:00:00Z", "2026-11-30T10:00:00", "not a time", "9999-99-99T00:00:00Z"]
)


def _event_shaped(tail: str) -> st.SearchStrategy[bytes]:
    """Events, CloudEvents or of the previous envelope, published on
    ``fuzz.<tail>``: the type is mostly the one the subject says."""
    return st.fixed_dictionaries(
        {
            "type": st.just(f"fuzz.{tail}") | st.text(max_size=20) | json_values,
            "source": st.text(max_size=20) | json_values,
        },
        optional={
            "specversion": st.just("1.0") | st.just("0.3") | json_values,
            "id": st.text(max_size=30) | json_values,
            "time": _times | json_values,
            "datacontenttype": st.sampled_from(["application/json", "text/plain"]) | json_values,
            "subject": st.text(max_size=20) | json_values,
            "instanceid": st.text(max_size=20) | json_values,
            "instance_id": st.none() | st.text(max_size=20) | json_values,
            "data": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
            "data_base64": st.just("aGk=") | json_values,
            "ext1": json_values,
        },
    ).map(_dumps)


def _payloads_for(tail: str) -> st.SearchStrategy[bytes]:
    shaped = _event_shaped(tail)
    return st.one_of(
        shaped,
        shaped,  # weighted: most look like events, many are valid
        json_values.map(_dumps),
        st.binary(max_size=200),
        deep_nesting,
        huge_strings,
        huge_binary,
        invalid_utf8,
    )


fuzzed_events: st.SearchStrategy[tuple[str, bytes]] = event_tails.flatmap(
    lambda tail: st.tuples(st.just(tail), _payloads_for(tail))
)
"""(subject tail under ``fuzz.``, payload) pairs."""


def tick_payloads(spec: WorkerSpec) -> st.SearchStrategy[bytes]:
    """Ticks for ``spec``'s worker: valid, forged, mistyped, deep or oversized."""
    worker, interval = spec.name, spec.interval
    now = datetime.now(UTC)
    current = spec.slot_at(now.timestamp())
    valid = st.integers(min_value=-3, max_value=3).map(
        lambda back: _dumps(
            {
                "worker": worker,
                "slot": current + back,
                "scheduled": spec.slot_start_dt(current + back).isoformat(),
                "interval": f"PT{int(interval.total_seconds())}S",
            }
        )
    )
    tick_shaped = st.fixed_dictionaries(
        {
            "worker": st.sampled_from([worker, "other", ""]) | json_values,
            "slot": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
            "scheduled": st.datetimes(
                min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)
            ).map(lambda d: d.isoformat() + "Z")
            | st.just(now.isoformat())
            | json_values,
            "interval": st.sampled_from(["PT0S", f"PT{int(interval.total_seconds())}S", "P1D"])
            | json_values,
        },
        optional={"origin": st.text(max_size=20) | json_values},
    ).map(_dumps)
    return st.one_of(
        valid,
        tick_shaped,
        tick_shaped,
        json_values.map(_dumps),
        st.binary(max_size=200),
        deep_nesting,
        st.integers(min_value=5_000, max_value=50_000).map(lambda n: b'{"worker":"' + b"w" * n),
    )


api_payloads: st.SearchStrategy[bytes] = st.one_of(
    json_values.map(_dumps),
    st.dictionaries(
        st.sampled_from(["instances", "domains", "instance", "worker", "limit", "since"]),
        json_values,
        max_size=3,
    ).map(_dumps),
    st.binary(max_size=200),
    deep_nesting,
    invalid_utf8,
)
