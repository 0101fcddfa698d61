"""``ctrlplane schema events``: one strict draft 2020-12 schema of every event (issue 12)."""

from __future__ import annotations

import json
import types
import typing
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from ctrlplane.actors.info import WorkerFailed
from ctrlplane.actors.runs import Outcome, Trigger
from ctrlplane.bus import Event, encode
from ctrlplane.cli.events import schema
from ctrlplane.events import (
    EVENT_TYPES,
    CertRenewalFailed,
    DeployChange,
    HealthChange,
    InstanceDrift,
    InstanceRescheduled,
    data_of,
    event_schema,
)
from ctrlplane.store.deployments import DeploymentState
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import InstanceState
from tests import event_contract
from tests.event_contract import problems, validator

HEALTH = {
    "name": "web",
    "check": "http",
    "previous": "healthy",
    "current": "unhealthy",
    "message": "refused",
}


def _event(**changes: Any) -> dict[str, Any]:
    event = json.loads(encode(Event(type="health.failed", source="t", data=HEALTH)))
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def test_the_schema_is_a_valid_draft_2020_12_schema_with_no_vendor_keywords() -> None:
    schema = event_schema()
    Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    assert "x-" not in text.replace("x-event", "")  # no x-event-types, no other x- keyword
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert '"null"' not in text  # absent, never null


def test_the_cli_prints_the_same_schema() -> None:
    # The group, not ctrlplane.cli.main: main configures logging for the
    # whole process, which later tests' log captures would miss.
    result = CliRunner().invoke(schema, ["events"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == event_schema()


def test_every_built_in_type_has_its_data_tied_to_it() -> None:
    schema = event_schema()
    tied = {
        rule["if"]["properties"]["type"]["const"]: rule["then"]["properties"]["data"]["$ref"]
        for rule in schema["allOf"]
    }
    assert tied == {name: f"#/$defs/{cls.__name__}" for name, cls in EVENT_TYPES.items()}


def test_every_timestamp_is_a_date_time() -> None:
    defs = event_schema()["$defs"]
    times = {
        (name, field)
        for name, d in defs.items()
        for field, prop in d.get("properties", {}).items()
        if prop.get("format") == "date-time"
    }
    assert ("Event", "time") in times
    assert {("InstanceDrift", "detected_at"), ("CertIssued", "not_after")} <= times
    assert ("CertRenewalFailed", "not_after") in times  # optional, still a date-time
    # And a naive one is refused on the way in: every datetime is Annotated(tz=True).
    for cls in dict.fromkeys(EVENT_TYPES.values()):
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            if datetime in (typing.get_args(hint) if union else (hint,)):
                raise AssertionError(f"{cls.__name__}.{name} is a datetime without tz=True")


def test_statuses_states_and_outcomes_are_enums_matching_the_code() -> None:
    defs = event_schema()["$defs"]
    assert defs["HealthStatus"]["enum"] == sorted(s.value for s in HealthStatus)
    assert defs["InstanceState"]["enum"] == sorted(s.value for s in InstanceState)
    assert defs["DeploymentState"]["enum"] == sorted(s.value for s in DeploymentState)
    assert defs["Trigger"]["enum"] == sorted(t.value for t in Trigger)
    outcomes = set(defs["WorkerFailed"]["properties"]["outcome"]["enum"])
    assert outcomes == {Outcome.ERROR.value, Outcome.TIMEOUT.value}
    assert defs["DesiredState"]["enum"] == ["running", "stopped"]


def test_a_health_failed_with_wrong_data_is_refused() -> None:
    assert problems(_event()) == []
    assert problems(_event(data={**HEALTH, "current": "sick"}))
    assert problems(_event(data={"check": "http"}))
    assert problems(_event(data=...))  # a built-in type must carry its data


def test_an_unknown_type_has_free_data() -> None:
    assert problems(_event(type="billing.invoiced", data={"anything": [1, {"x": None}]})) == []
    assert problems(_event(type="billing.invoiced", data=...)) == []
    assert problems(_event(type="billing.invoiced", data=[1]))  # an object all the same


@pytest.mark.parametrize(
    "changes",
    [
        {"time": "yesterday"},
        {"time": ...},
        {"id": ...},
        {"specversion": "0.3"},
        {"datacontenttype": "text/plain"},
        {"subject": None},
        {"instance_id": "i-1"},  # not a legal attribute name
        {"data_base64": "aGk="},
        {"ext": {"nested": 1}},  # an extension's value is a scalar
    ],
)
def test_the_envelope_is_strict(changes: dict[str, Any]) -> None:
    assert problems(_event(**changes))


def test_extension_attributes_are_allowed() -> None:
    assert problems(_event(traceparent="00-abc-def-01", partitionkey="p1", seq=3)) == []


@pytest.mark.parametrize(
    "payload",
    [
        InstanceDrift(
            name="web",
            recorded=InstanceState.RUNNING,
            actual=InstanceState.STOPPED,
            detected_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        InstanceRescheduled(name="web", to_node="node-b"),
        HealthChange(
            name="web",
            check="http",
            previous=HealthStatus.HEALTHY,
            current=HealthStatus.UNKNOWN,
            message="",
        ),
        DeployChange(name="web", deployment="d1", spec_hash="h", state=DeploymentState.RUNNING),
        CertRenewalFailed(
            hostname="a.test",
            instance="web",
            issuer="local",
            error="down",
            failures=1,
            next_attempt=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        WorkerFailed(
            worker="w", run_id="r", trigger=Trigger.ONCE, attempt=1, outcome="timeout", process="p"
        ),
    ],
)
def test_a_field_with_no_value_is_absent_and_the_data_converts_back(payload: Any) -> None:
    data = data_of(payload)
    assert None not in data.values()
    assert msgspec.convert(data, type(payload)) == payload


def test_a_bad_event_published_in_a_test_is_recorded_for_its_test_to_fail() -> None:
    event_contract.note(Event(type="health.failed", source="t", data={"check": "http"}))
    try:
        assert any("health.failed from t" in p for p in event_contract.INVALID)
    finally:
        event_contract.INVALID.clear()
    assert validator() is validator()  # compiled once
