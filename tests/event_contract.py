"""Checking events against ``ctrlplane schema events`` with a strict validator.

jsonschema's Draft 2020-12 validator with its format checker: ``date-time``
is checked only when ``rfc3339-validator`` is installed (a dev extra), so its
absence is an error here rather than a check that silently passes.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator

from ctrlplane.bus.codec import encode
from ctrlplane.bus.messages import Event
from ctrlplane.events import event_schema


@functools.cache
def validator() -> Draft202012Validator:
    """The one compiled validator of the event schema (the schema checked first)."""
    schema = event_schema()
    Draft202012Validator.check_schema(schema)
    checker = Draft202012Validator.FORMAT_CHECKER
    if "date-time" not in checker.checkers:
        raise RuntimeError("jsonschema cannot check date-time: install rfc3339-validator")
    return Draft202012Validator(schema, format_checker=checker)


def problems(event: Any) -> list[str]:
    """Why ``event`` (a decoded JSON value) does not follow the schema; empty if it does."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(event)'}: {error.message}"
        for error in validator().iter_errors(event)
    ]


def payload_problems(payload: bytes) -> list[str]:
    """:func:`problems` of an encoded event."""
    return problems(json.loads(payload))


INVALID: list[str] = []
"""What the running test published against the schema; the autouse fixture in
conftest.py empties it before each test and fails the test if it is not
empty after."""


def note(event: Event, payload: bytes | None = None) -> None:
    """Check an event the test suite publishes; a problem lands in :data:`INVALID`.

    Recorded, not raised: the publisher is often a worker in the background
    (or one that catches what a publish raises), which the test would not see.
    """
    found = payload_problems(encode(event) if payload is None else payload)
    INVALID.extend(f"{event.type} from {event.source}: {p}" for p in found)
