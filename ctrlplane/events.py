"""The domain events ctrlplane publishes, with a Struct for each one's ``data``.

Every event travels as a :class:`~ctrlplane.bus.Event` envelope on
``<prefix>.events.<type>``; ``ctrlplane schema events`` prints the JSON Schema
of the envelope and of each ``data`` below, so services in other languages
can subscribe with confidence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, field

from ctrlplane.actors.info import WorkerFailed
from ctrlplane.bus.messages import Event
from ctrlplane.schemas import without_null
from ctrlplane.store.deployments import DeploymentState
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import DesiredState, InstanceState

# Every data Struct: a field with no value is left out, never written as
# null (omit_defaults, and every optional field defaults to None); times are
# RFC 3339 with a UTC offset, durations are seconds as numbers.
Time = Annotated[datetime, Meta(tz=True)]


class InstanceDrift(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``instance.drift``: the provider reports another state than the one recorded."""

    name: str
    recorded: InstanceState
    actual: InstanceState
    detected_at: Time
    detail: str | None = None
    """What the provider said about it, if anything."""


class InstanceLifecycle(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``instance.created|updated|started|stopped|restarted|destroyed|failed``."""

    name: str
    desired: DesiredState | None = None
    handle: str | None = None
    reason: str | None = None
    spec_changed: bool | None = None
    attempt: int | None = None


class InstanceRescheduled(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``instance.rescheduled``: a host-bound instance was placed on another node
    because its node went silent for ``node_timeout``; it is started there next."""

    name: str
    from_node: str | None = field(default=None, name="from")
    """The node it was placed on (dead); absent when it had never been placed."""
    to_node: str = field(name="to")
    """The live node that took it over."""


class HealthChange(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``health.passed|failed|degraded|recovered|unknown``: a check changed status."""

    name: str
    check: str
    previous: HealthStatus
    current: HealthStatus
    message: str
    latency: float | None = None
    """Seconds the check took; absent when it could not run."""


class DeployChange(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``deploy.started|succeeded|failed``: a deployment of an instance moved on."""

    name: str
    deployment: str
    """The deployment's id."""
    spec_hash: str
    previous_hash: str | None = None
    """The spec replaced; absent for an instance's first start."""
    state: DeploymentState
    error: str | None = None
    rolled_back: bool | None = None
    """``deploy.failed``: true when the previous spec was started again and runs."""


class GcCompleted(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``gc.completed``: one GarbageCollector run."""

    deleted: dict[str, int]
    """Rows deleted per kind: deployments, health_results, audit, metrics, resource_snapshots."""
    failed: dict[str, str]
    """Kinds that failed, with the error; the other kinds were still collected."""
    batches: int
    seconds: float
    """How long the run took, in seconds."""


class DomainChange(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``domain.created|updated|removed``: a declared domain changed (config or ``apply``)."""

    hostname: str
    instance: str
    issuer: str


class CertIssued(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``cert.provisioned`` (a domain's first certificate) and ``cert.renewed``."""

    hostname: str
    instance: str
    issuer: str
    serial: str
    not_before: Time
    not_after: Time
    previous_serial: str | None = None
    """``cert.renewed``: the certificate replaced."""


class CertRenewalFailed(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``cert.renewal_failed``: issuing a domain's certificate failed; it is retried later."""

    hostname: str
    instance: str
    issuer: str
    error: str
    failures: int
    """Failed attempts in a row."""
    next_attempt: Time
    """No new attempt before this (exponential back-off, capped)."""
    not_after: Time | None = None
    """When the current certificate expires; absent when there is none yet."""


class CertExpiring(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``cert.expiring``: a certificate is due for renewal but cannot be renewed yet."""

    hostname: str
    instance: str
    issuer: str
    serial: str
    not_after: Time
    time_left: float
    """Seconds until it expires (negative once it has)."""
    reason: str
    """Why it is not renewed now: backing off after failures, or auto_renew is off."""
    next_attempt: Time | None = None


EVENT_TYPES: dict[str, type[Struct]] = {
    "instance.drift": InstanceDrift,
    "instance.rescheduled": InstanceRescheduled,
    **{
        f"instance.{kind}": InstanceLifecycle
        for kind in ("created", "updated", "started", "stopped", "restarted", "destroyed", "failed")
    },
    **{
        f"health.{kind}": HealthChange
        for kind in ("passed", "failed", "degraded", "recovered", "unknown")
    },
    "worker.failed": WorkerFailed,
    **{f"domain.{kind}": DomainChange for kind in ("created", "updated", "removed")},
    **{f"cert.{kind}": CertIssued for kind in ("provisioned", "renewed")},
    "cert.renewal_failed": CertRenewalFailed,
    "cert.expiring": CertExpiring,
    **{f"deploy.{kind}": DeployChange for kind in ("started", "succeeded", "failed")},
    "gc.completed": GcCompleted,
}


def data_of(payload: Struct) -> dict[str, Any]:
    """An event's ``data`` mapping from its Struct (JSON-ready)."""
    data = msgspec.to_builtins(payload)
    assert isinstance(data, dict)
    return data


ENVELOPE_REQUIRED = ("specversion", "id", "source", "type", "time")
"""The CloudEvents attributes every event of ours carries (``time`` is
optional in CloudEvents, required here)."""

EXTENSION_NAME = "^[a-z0-9]{1,20}$"
"""A CloudEvents attribute name: lowercase letters and digits, at most 20."""


def event_schema() -> dict[str, Any]:
    """One JSON Schema (draft 2020-12) of every event: the CloudEvents envelope,
    with each built-in type tied to the schema of its ``data``.

    Strict where it can be: every timestamp has ``format: date-time``, every
    status, state and outcome is an ``enum``, no field admits null (a field
    with no value is absent), and no keyword outside the draft's vocabulary
    is used. An unknown event type's ``data`` is any JSON object.
    """
    structs: list[Any] = [Event, *dict.fromkeys(EVENT_TYPES.values())]
    _, components = msgspec.json.schema_components(structs, ref_template="#/$defs/{name}")
    defs = {name: without_null(schema) for name, schema in components.items()}
    envelope = defs["Event"]
    envelope["required"] = list(ENVELOPE_REQUIRED)
    # Other CloudEvents extension attributes are allowed, with a legal name and
    # a scalar value; anything else (instance_id, data_base64) is refused.
    envelope["propertyNames"] = {"pattern": EXTENSION_NAME}
    # anyOf rather than a type list: Ajv's strict mode refuses union types.
    envelope["additionalProperties"] = {
        "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]
    }
    # "type": "object" in each branch is redundant for the standard but keeps
    # Ajv's strict mode (strictTypes) content, as other-language clients use it.
    rules = [
        {
            "if": {"type": "object", "properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {
                "type": "object",
                "properties": {"data": {"$ref": f"#/$defs/{cls.__name__}"}},
                "required": ["data"],
            },
        }
        for name, cls in EVENT_TYPES.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ctrlplane events",
        "description": (
            "Every event is a CloudEvents 1.0 event in JSON structured mode, published on "
            "<prefix>.events.<type>. Each built-in type's data is given by the allOf rules; "
            "an unknown type's data is any JSON object."
        ),
        "$comment": (
            "A field with no value is absent, never null. Times are RFC 3339 with a UTC "
            "offset; durations in data are seconds as numbers."
        ),
        "$ref": "#/$defs/Event",
        "allOf": rules,
        "$defs": defs,
    }
