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
from msgspec import Struct, field

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


class InstanceRescheduled(Struct, frozen=True, kw_only=True):
    """``instance.rescheduled``: a host-bound instance was placed on another node
    because its node went silent for ``node_timeout``; it is started there next."""

    name: str
    from_node: str | None = field(name="from")
    """The node it was placed on (dead); null when it had never been placed."""
    to_node: str = field(name="to")
    """The live node that took it over."""


class HealthChange(Struct, frozen=True, kw_only=True):
    """``health.passed|failed|degraded|recovered|unknown``: a check changed status."""

    name: str
    check: str
    previous: str
    current: str
    message: str
    latency: float | None
    """Seconds the check took, or null when it could not run."""


class DeployChange(Struct, frozen=True, kw_only=True):
    """``deploy.started|succeeded|failed``: a deployment of an instance moved on."""

    name: str
    deployment: str
    """The deployment's id."""
    spec_hash: str
    previous_hash: str | None
    """The spec replaced; null for an instance's first start."""
    state: str
    error: str | None = None
    rolled_back: bool | None = None
    """``deploy.failed``: true when the previous spec was started again and runs."""


class GcCompleted(Struct, frozen=True, kw_only=True):
    """``gc.completed``: one GarbageCollector run."""

    deleted: dict[str, int]
    """Rows deleted per kind: deployments, health_results, audit, metrics, resource_snapshots."""
    failed: dict[str, str]
    """Kinds that failed, with the error; the other kinds were still collected."""
    batches: int
    seconds: float


class DomainChange(Struct, frozen=True, kw_only=True):
    """``domain.created|updated|removed``: a declared domain changed (config or ``apply``)."""

    hostname: str
    instance: str
    issuer: str


class CertIssued(Struct, frozen=True, kw_only=True):
    """``cert.provisioned`` (a domain's first certificate) and ``cert.renewed``."""

    hostname: str
    instance: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    previous_serial: str | None = None
    """``cert.renewed``: the certificate replaced."""


class CertRenewalFailed(Struct, frozen=True, kw_only=True):
    """``cert.renewal_failed``: issuing a domain's certificate failed; it is retried later."""

    hostname: str
    instance: str
    issuer: str
    error: str
    failures: int
    """Failed attempts in a row."""
    next_attempt: datetime
    """No new attempt before this (exponential back-off, capped)."""
    not_after: datetime | None
    """When the current certificate expires; null when there is none yet."""


class CertExpiring(Struct, frozen=True, kw_only=True):
    """``cert.expiring``: a certificate is due for renewal but cannot be renewed yet."""

    hostname: str
    instance: str
    issuer: str
    serial: str
    not_after: datetime
    time_left: float
    """Seconds until it expires (negative once it has)."""
    reason: str
    """Why it is not renewed now: backing off after failures, or auto_renew is off."""
    next_attempt: datetime | None = None


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
