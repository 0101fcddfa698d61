"""The domain events ctrlplane publishes, with a Struct for each one's ``data``.

Every event travels as a :class:`~ctrlplane.bus.Event` envelope on
``<prefix>.events.<type>``; ``ctrlplane schema events`` prints the JSON Schema
of the envelope and of each ``data`` below, so services in other languages
can subscribe with confidence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from ctrlplane.actors.info import WorkerFailed
from ctrlplane.bus.messages import Event


class InstanceDrift(Struct, frozen=True, kw_only=True):
    """``instance.drift``: the provider reports another state than the one recorded."""

    name: str
    recorded: str
    actual: str
    detected_at: datetime
    detail: str = ""


class InstanceLifecycle(Struct, frozen=True, kw_only=True):
    """``instance.created|updated|started|stopped|restarted|destroyed|failed``."""

    name: str
    desired: str | None = None
    handle: str | None = None
    reason: str | None = None
    spec_changed: bool | None = None
    attempt: int | None = None


class HealthChange(Struct, frozen=True, kw_only=True):
    """``health.passed|failed|degraded|recovered|unknown``: a check changed status."""

    name: str
    check: str
    previous: str
    current: str
    message: str
    latency: float | None
    """Seconds the check took, or null when it could not run."""


EVENT_TYPES: dict[str, type[Struct]] = {
    "instance.drift": InstanceDrift,
    **{
        f"instance.{kind}": InstanceLifecycle
        for kind in ("created", "updated", "started", "stopped", "restarted", "destroyed", "failed")
    },
    **{
        f"health.{kind}": HealthChange
        for kind in ("passed", "failed", "degraded", "recovered", "unknown")
    },
    "worker.failed": WorkerFailed,
}


def data_of(payload: Struct) -> dict[str, Any]:
    """An event's ``data`` mapping from its Struct (JSON-ready)."""
    data = msgspec.to_builtins(payload)
    assert isinstance(data, dict)
    return data


def event_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope and of each event type's ``data``."""
    types: list[Any] = [Event, *dict.fromkeys(EVENT_TYPES.values())]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ctrlplane events",
        "description": (
            "Every event is an Event envelope published on <prefix>.events.<type>; "
            "x-event-types maps each type to the schema of its data."
        ),
        "$ref": schemas[0]["$ref"],
        "x-event-types": {
            name: {"$ref": f"#/$defs/{cls.__name__}"} for name, cls in EVENT_TYPES.items()
        },
        "$defs": components,
    }
