"""The control API: a discoverable NATS micro service, strict requests, errors in the micro
convention, durations in seconds, and replies that match ``ctrlplane schema api``."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from referencing import Registry, Resource

from ctrlplane.actors.info import WorkerInfo, WorkerKind
from ctrlplane.actors.scheduler import Scheduler
from ctrlplane.api import (
    ENDPOINTS,
    SERVICE_NAME,
    ApiService,
    DeploymentsReply,
    DeploymentsRequest,
    DomainApi,
    HealthReply,
    RemoteError,
    WorkersReply,
    WorkersRequest,
    api_schema,
    list_workers,
    request,
)
from ctrlplane.api.controls import ControlApi
from ctrlplane.api.errors import CODE_HEADER, MESSAGE_HEADER
from ctrlplane.bus import Bus, DeadLetter
from ctrlplane.inventory import Inventory
from ctrlplane.limits import MAX_LIMIT
from ctrlplane.providers.process import ProcessProvider
from ctrlplane.security import MUTATING_ENDPOINTS, READ_ENDPOINTS
from ctrlplane.store import Store
from ctrlplane.store.runs import Outcome, Trigger, WorkerRun
from tests.processes import env_for, run_cli

SCHEMA_ID = "urn:test:ctrlplane-api"

# Stopped: applying it records it and runs nothing.
STOPPED = {"name": "web", "command": ["sleep", "30"], "desired_state": "stopped"}


def _workers_handler(process: str) -> Any:
    async def workers(_: WorkersRequest) -> WorkersReply:
        info = WorkerInfo(name="tick", interval=timedelta(seconds=1.5), kind=WorkerKind.PERIODIC)
        return WorkersReply(process=process, workers=[info])

    return workers


@pytest_asyncio.fixture
async def service(store: Store, bus: Bus, tmp_path: Path) -> AsyncIterator[ApiService]:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    inventory = Inventory(store, {"process": ProcessProvider(tmp_path / "data")}, bus.publish_event)
    handlers = {**DomainApi(bus, store, inventory).handlers(), "workers": _workers_handler("p1")}
    # Served like every endpoint (tests/test_worker_control.py calls them on a real scheduler).
    handlers |= ControlApi(bus, Scheduler(bus)).handlers()
    service = ApiService(bus, handlers)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _call(bus: Bus, name: str, payload: bytes, subject: str | None = None) -> Msg:
    return await bus.nc.request(subject or bus.subjects.api(name), payload, timeout=10)


def _error(msg: Msg) -> tuple[int, str]:
    """The error of an answer, checking that headers and body agree."""
    assert msg.headers is not None, msg.data
    code, header = int(msg.headers[CODE_HEADER]), msg.headers[MESSAGE_HEADER]
    body = json.loads(msg.data)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"].startswith(header[:200])
    return code, body["error"]["message"]


def _ok(msg: Msg) -> dict[str, Any]:
    assert not msg.headers or MESSAGE_HEADER not in msg.headers, msg.headers
    body: dict[str, Any] = json.loads(msg.data)
    assert "error" not in body
    return body


# RFC 3339 with an offset: checked here rather than through jsonschema's
# optional date-time dependency, so that the check cannot silently go away.
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = datetime.fromisoformat(value)
    return "T" in value and parsed.tzinfo is not None


def _validator(schema: dict[str, Any], pointer: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(SCHEMA_ID, Resource.from_contents(schema))
    return jsonschema.Draft202012Validator(
        {"$ref": f"{SCHEMA_ID}#{pointer}"}, registry=registry, format_checker=FORMATS
    )


# --------------------------------------------------------------------------
# Discovery.


async def _gather(bus: Bus, subject: str, *, until: Any) -> list[dict[str, Any]]:
    """Answers to ``subject`` until one satisfies ``until`` (10 s at most)."""
    inbox = bus.nc.new_inbox()
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        got.put_nowait(msg)

    sub = await bus.nc.subscribe(inbox, cb=collect)
    out: list[dict[str, Any]] = []
    try:
        await bus.nc.publish(subject, b"", reply=inbox)
        async with asyncio.timeout(10):
            while not any(until(a) for a in out):
                out.append(json.loads((await got.get()).data))
    finally:
        await sub.unsubscribe()
    return out


async def test_the_service_is_discovered_with_ping_info_and_stats(
    service: ApiService, bus: Bus
) -> None:
    s = bus.subjects
    for verb in ("PING", "INFO", "STATS"):
        for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}"):
            answers = await _gather(bus, subject, until=lambda a: a["id"] == service.id)
            assert all(a["name"] == SERVICE_NAME for a in answers)
    ping = json.loads((await _call(bus, "", b"", f"$SRV.PING.{SERVICE_NAME}.{service.id}")).data)
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["version"] == importlib.metadata.version("ctrlplane-workers")
    assert ping["metadata"] == {
        "api_versions": "v1",
        "subject_prefix": s.prefix,
        "schema": "ctrlplane schema api",
    }
    info = json.loads((await _call(bus, "", b"", f"$SRV.INFO.{SERVICE_NAME}.{service.id}")).data)
    listed = {e["name"]: e for e in info["endpoints"]}
    assert set(listed) == {e.name for e in ENDPOINTS}
    for name, e in listed.items():
        assert e["subject"] == f"{s.prefix}.api.v1.{name}"
        assert e["metadata"]["access"] == ("admin" if name in MUTATING_ENDPOINTS else "observer")
    assert listed["instances"]["queue_group"] == "ctrlplane-api"
    assert listed["workers"]["queue_group"] == f"ctrlplane-api-workers-{service.id}"
    await _call(bus, "instances", b"")
    stats = json.loads((await _call(bus, "", b"", f"$SRV.STATS.{SERVICE_NAME}.{service.id}")).data)
    counted = {e["name"]: e["num_requests"] for e in stats["endpoints"]}
    assert counted["instances"] == 1


def test_security_names_every_endpoint_of_the_catalog() -> None:
    assert {e.name for e in ENDPOINTS if e.mutating} == set(MUTATING_ENDPOINTS)
    assert {e.name for e in ENDPOINTS if not e.mutating} == set(READ_ENDPOINTS)


# --------------------------------------------------------------------------
# Happy paths, and every reply valid against the exported schema.


async def test_every_endpoint_answers_and_matches_the_schema(service: ApiService, bus: Bus) -> None:
    schema = api_schema(bus.subjects)
    jsonschema.Draft202012Validator.check_schema(schema)
    apply = {"instances": [STOPPED]}
    requests: dict[str, dict[str, Any]] = {
        "apply": apply,
        "instances": {},
        "health": {},
        "telemetry": {"instance": "web", "since": 60},
        "deployments": {"instance": "web", "limit": 5},
        "certs": {},
        "workers": {},
    }
    answers: dict[str, dict[str, Any]] = {}
    for name, body in requests.items():
        props = f"/properties/{name}/properties"
        assert _validator(schema, f"{props}/request").is_valid(body), name
        answers[name] = _ok(await _call(bus, name, json.dumps(body).encode()))
        errors = list(_validator(schema, f"{props}/reply").iter_errors(answers[name]))
        assert errors == [], (name, answers[name])
        assert schema["properties"][name]["properties"]["subject"]["const"] == bus.subjects.api(
            name
        )
    assert answers["apply"]["result"]["created"] == ["web"]
    # The format is checked: a timestamp without an offset is refused.
    (shown,) = answers["instances"]["instances"]
    naive = {"instances": [{**shown, "updated": "2026-11-30T06:34:33"}]}
    assert not _validator(schema, "/properties/instances/properties/reply").is_valid(naive)
    (view,) = answers["instances"]["instances"]
    assert (view["name"], view["desired"], view["health"]) == ("web", "stopped", "unknown")
    # A field with no value is absent, never null (as in events), and the
    # schema admits no null anywhere.
    assert "handle" not in view and "state_error" not in view
    assert '"null"' not in json.dumps(schema)
    assert answers["telemetry"]["instance"] == "web"
    assert answers["workers"]["workers"][0]["interval"] == 1.5  # seconds, a number
    # Without a node registry, nodes says so: 503, valid against the error schema.
    msg = await _call(bus, "nodes", b"")
    assert _error(msg)[0] == 503
    assert _validator(schema, "/properties/nodes/properties/error").is_valid(json.loads(msg.data))


async def test_the_client_decodes_seconds_and_raises_the_error_message(
    service: ApiService, bus: Bus
) -> None:
    from ctrlplane.api import ApplyReply, ApplyRequest, TelemetryReply, TelemetryRequest
    from ctrlplane.declarations import InstanceDecl

    decl = msgspec.convert(STOPPED, InstanceDecl)
    applied = await request(bus, "apply", ApplyRequest(instances=[decl]), ApplyReply, within=10)
    assert applied.result.created == ["web"]
    reply = await request(
        bus, "telemetry", TelemetryRequest(instance="web"), TelemetryReply, within=10
    )
    assert reply.instance == "web"
    with pytest.raises(RemoteError, match="no instance 'db'") as raised:
        await request(bus, "telemetry", TelemetryRequest(instance="db"), TelemetryReply, within=10)
    assert raised.value.code == 404
    # Deployments too: an empty list would hide the typo.
    with pytest.raises(RemoteError, match="no instance 'db'") as raised:
        await request(
            bus, "deployments", DeploymentsRequest(instance="db"), DeploymentsReply, within=10
        )
    assert raised.value.code == 404
    (answer,) = await list_workers(bus)
    assert answer.workers[0].interval == timedelta(seconds=1.5)


# --------------------------------------------------------------------------
# Strict requests.


async def test_an_empty_body_is_an_empty_object(service: ApiService, bus: Bus) -> None:
    for name in ("instances", "health", "certs", "deployments", "workers"):
        for payload in (b"", b"{}", b"  \n"):
            _ok(await _call(bus, name, payload))
    code, message = _error(await _call(bus, "telemetry", b""))
    assert code == 400 and "missing required field `instance`" in message


@pytest.mark.usefixtures("service")
@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        ("instances", b"not json", "malformed"),
        ("workers", b"not json", "malformed"),
        ("instances", b"[]", "Expected `object`, got `array`"),
        ("instances", b"null", "Expected `object`, got `null`"),
        ("instances", b'{"limit": 5}', "unknown field `limit`"),
        ("deployments", b'{"instance": "web", "limt": 5}', "unknown field `limt`"),
        ("apply", b'{"instances": [{"name": "a", "command": ["x"], "comand": 1}]}', "comand"),
        ("deployments", b'{"limit": 9223372036854775808}', "limit must be between"),
        ("deployments", f'{{"limit": {MAX_LIMIT + 1}}}'.encode(), "limit must be between"),
        ("deployments", b'{"limit": 0}', "limit must be between"),
        ("deployments", b'{"limit": "' + b"9" * 5000 + b'"}', "Expected `int`"),
        ("telemetry", b'{"instance": "web", "since": 1e12}', "since must be between"),
        ("telemetry", b'{"instance": "web", "since": -1}', "since must be between"),
        ("telemetry", b'{"instance": "web", "since": 1e300}', "out of range"),
        ("telemetry", b'{"instance": "web", "since": "PT10M"}', "duration in seconds"),
        ("telemetry", b'{"instance": "web", "since": true}', "Expected `duration`"),
        ("telemetry", b'{"instance": "web", "since": ' + b"[" * 100_000, "nested"),
        ("apply", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        ("apply", b"\xff\xfe", "malformed"),
    ],
)
async def test_a_bad_request_is_a_400_with_the_reason(
    bus: Bus, name: str, payload: bytes, problem: str
) -> None:
    code, message = _error(await _call(bus, name, payload))
    assert code == 400
    assert message.startswith(f"bad request on {bus.subjects.api(name)}: "), message
    assert problem in message
    assert len(message) < 1000


async def test_durations_in_requests_are_seconds(
    service: ApiService, bus: Bus, store: Store
) -> None:
    check = {"name": "up", "type": "tcp", "target": "127.0.0.1:1", "timeout": 0.5}
    body = {"instances": [{**STOPPED, "checks": [check]}]}
    _ok(await _call(bus, "apply", json.dumps(body).encode()))
    _ok(await _call(bus, "telemetry", b'{"instance": "web", "since": 0.25}'))
    iso = {"instances": [{**STOPPED, "checks": [{**check, "latency_threshold": "PT2S"}]}]}
    code, message = _error(await _call(bus, "apply", json.dumps(iso).encode()))
    assert code == 400 and "$.instances[0].checks[0].latency_threshold" in message
    (view,) = (await request(bus, "health", {}, HealthReply, within=10)).checks
    assert view.check == "up"
    (state,) = await store.health.states()
    assert state.spec.timeout == timedelta(seconds=0.5)


# --------------------------------------------------------------------------
# Unknown endpoints and versions.


@pytest.mark.usefixtures("service")
async def test_unknown_endpoints_and_versions_are_404s_naming_what_exists(bus: Bus) -> None:
    p = bus.subjects.prefix
    code, message = _error(await _call(bus, "", b"{}", f"{p}.api.v1.nope"))
    assert code == 404 and "'nope'" in message
    assert all(e.name in message for e in ENDPOINTS)
    code, message = _error(await _call(bus, "", b"{}", f"{p}.api.v1.instances.more"))
    assert code == 404 and "'instances.more'" in message
    code, message = _error(await _call(bus, "", b"{}", f"{p}.api.v2.instances"))
    assert code == 404 and "'v2'" in message and "serves v1" in message
    code, message = _error(await _call(bus, "", b"{}", f"{p}.api.instances"))
    assert code == 404 and f"send to {p}.api.v1.instances" in message
    # The catch-all stays out of the way of the endpoints.
    for _ in range(5):
        _ok(await _call(bus, "instances", b""))


# --------------------------------------------------------------------------
# How many answer: one process, or every process for workers.


async def _answers(bus: Bus, name: str, want: int) -> int:
    """Answers to one request: waits for ``want``, then 0.5 s for any more."""
    inbox = bus.nc.new_inbox()
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        got.put_nowait(msg)

    sub = await bus.nc.subscribe(inbox, cb=collect)
    count = 0
    try:
        await bus.nc.publish(bus.subjects.api(name), b"", reply=inbox)
        async with asyncio.timeout(10):
            while count < want:
                _ok(await got.get())
                count += 1
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await got.get()
    finally:
        await sub.unsubscribe()
    return count


async def test_one_process_answers_an_endpoint_and_every_process_answers_workers(
    service: ApiService, bus: Bus, store: Store, tmp_path: Path
) -> None:
    inventory = Inventory(store, {"process": ProcessProvider(tmp_path / "d2")}, bus.publish_event)
    handlers = {**DomainApi(bus, store, inventory).handlers(), "workers": _workers_handler("p2")}
    second = ApiService(bus, handlers)
    await second.start()
    try:
        for _ in range(3):
            assert await _answers(bus, "instances", 1) == 1
        assert await _answers(bus, "workers", 2) == 2
        answers = await list_workers(bus)
        assert [a.process for a in answers] == ["p1", "p2"]
    finally:
        await second.stop()


async def test_a_failing_handler_is_a_500_and_the_service_keeps_serving(bus: Bus) -> None:
    async def broken(_: WorkersRequest) -> WorkersReply:
        raise RuntimeError("boom\r\nInjected: header")

    service = ApiService(bus, {"workers": broken})
    await service.start()
    try:
        msg = await _call(bus, "workers", b"")
        code, message = _error(msg)
        assert code == 500 and "boom" in message
        assert msg.headers is not None and "\n" not in msg.headers[MESSAGE_HEADER]
        assert "Injected" not in msg.headers
        assert await list_workers(bus, within=timedelta(seconds=1)) == []
    finally:
        await service.stop()


def test_an_unknown_handler_name_is_refused(bus: Bus) -> None:
    with pytest.raises(ValueError, match="no such endpoints"):
        ApiService(bus, {"nope": _workers_handler("x")})


def test_ctrlplane_schema_api_prints_a_strict_draft_2020_12_schema() -> None:
    result = run_cli(["schema", "api", "--prefix", "acme"], env_for())
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    endpoints = schema["properties"]
    assert set(endpoints) == {e.name for e in ENDPOINTS}
    for name, e in endpoints.items():
        assert e["properties"]["subject"] == {"const": f"acme.api.v1.{name}"}
        assert e["properties"]["error"] == {"$ref": "#/$defs/ErrorBody"}
    defs = schema["$defs"]
    # Only standard keywords, wherever they are: a strict validator compiles it.
    standard = set(jsonschema.Draft202012Validator.VALIDATORS) | {
        "$schema", "$defs", "$ref", "$comment", "title", "description", "default",
        "format", "examples",
    }  # fmt: skip

    def keywords(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*map(keywords, node)) if node else set()
        if not isinstance(node, dict):
            return set()
        found = set(node)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                found |= set().union(*map(keywords, value.values())) if value else set()
            elif key not in ("const", "enum", "default", "examples"):
                found |= keywords(value)
        return found

    assert keywords(schema) <= standard
    # No value is absent, never null: optional, and not nullable.
    assert defs["CheckView"]["properties"]["last_checked"] == {
        "type": "string",
        "format": "date-time",
    }
    assert "last_checked" not in defs["CheckView"]["required"]
    assert defs["CheckView"]["properties"]["last_latency"]["type"] == "number"
    assert defs["TelemetryRequest"]["properties"]["since"]["default"] == 600
    assert set(defs["HealthStatus"]["enum"]) == {"unknown", "healthy", "degraded", "unhealthy"}
    assert defs["Deployment"]["properties"]["started"] == {"type": "string", "format": "date-time"}
    assert defs["TelemetryRequest"]["additionalProperties"] is False
    bad = run_cli(["schema", "api", "--prefix", "a b"], env_for())
    assert bad.returncode == 2 and "--prefix" in bad.stderr


# --------------------------------------------------------------------------
# Run history and dead letters.


def _reply_errors(schema: dict[str, Any], name: str, answer: dict[str, Any]) -> list[Any]:
    return list(_validator(schema, f"/properties/{name}/properties/reply").iter_errors(answer))


async def test_runs_newest_first_filtered_and_valid(
    service: ApiService, bus: Bus, store: Store
) -> None:
    now = datetime.now(UTC)

    def run(id: str, worker: str, ago: float, outcome: Outcome, error: str | None = None) -> None:
        started = now - timedelta(seconds=ago)
        store.runs.record(
            WorkerRun(
                id=id,
                worker=worker,
                process="host:1",
                trigger=Trigger.EVENT,
                trigger_ref=f"ev-{id}",
                attempt=1,
                started=started,
                finished=started + timedelta(milliseconds=1500),
                outcome=outcome,
                error=error,
            )
        )

    run("old", "alpha", 7200, Outcome.OK)
    run("r1", "alpha", 10, Outcome.OK)
    run("r2", "alpha", 5, Outcome.ERROR, "RuntimeError: boom")
    run("r3", "beta", 2, Outcome.OK)
    schema = api_schema(bus.subjects)

    async def ids(body: dict[str, Any]) -> list[str]:
        answer = _ok(await _call(bus, "runs", json.dumps(body).encode()))
        assert _reply_errors(schema, "runs", answer) == []
        return [r["id"] for r in answer["runs"]]

    assert await ids({}) == ["r3", "r2", "r1"]  # the last hour by default
    assert await ids({"since": 3 * 3600}) == ["r3", "r2", "r1", "old"]
    assert await ids({"worker": "alpha"}) == ["r2", "r1"]
    assert await ids({"outcome": "error"}) == ["r2"]
    assert await ids({"worker": "beta", "outcome": "error"}) == []
    assert await ids({"limit": 1}) == ["r3"]
    answer = _ok(await _call(bus, "runs", b'{"outcome": "error"}'))
    (failed,) = answer["runs"]
    assert failed["error"] == "RuntimeError: boom"
    assert failed["duration"] == 1.5 and failed["ref"] == "ev-r2"
    assert (failed["trigger"], failed["process"], failed["attempt"]) == ("event", "host:1", 1)
    (ok,) = _ok(await _call(bus, "runs", b'{"worker": "beta"}'))["runs"]
    assert "error" not in ok  # absent, never null
    for bad in (b'{"outcome": "nope"}', b'{"limit": 0}', b'{"since": -1}', b'{"since": "1h"}'):
        assert _error(await _call(bus, "runs", bad))[0] == 400, bad


async def test_dead_letters_listed_shown_and_purged(service: ApiService, bus: Bus) -> None:
    s = bus.subjects
    for seq, worker in enumerate(["alpha", "beta", "alpha"], start=10):
        letter = DeadLetter(
            worker=worker,
            subject=s.event("test.fail"),
            reason=f"gave up after 2 attempts: boom {seq}\nTraceback follows",
            payload=json.dumps({"n": seq}),
            attempts=2,
            stream=s.events_stream,
            stream_seq=seq,
            size=9,
        )
        await bus.publish_dead_letter(letter)
    schema = api_schema(bus.subjects)

    async def listed(body: dict[str, Any]) -> list[dict[str, Any]]:
        answer = _ok(await _call(bus, "dlq_list", json.dumps(body).encode()))
        assert _reply_errors(schema, "dlq_list", answer) == []
        letters: list[dict[str, Any]] = answer["letters"]
        return letters

    every = await listed({})
    assert [(d["worker"], d["reason"][-22:]) for d in every] == [
        ("alpha", "boom 12\nTraceback follows"[-22:]),
        ("beta", "boom 11\nTraceback follows"[-22:]),
        ("alpha", "boom 10\nTraceback follows"[-22:]),
    ]
    ids = [d["id"] for d in every]
    assert ids == sorted(ids, reverse=True) and "payload" not in every[0]
    assert every[0]["reason"].endswith("\nTraceback follows")  # whole, not clipped
    assert every[0]["attempts"] == 2 and every[0]["subject"] == s.event("test.fail")
    assert [d["id"] for d in await listed({"worker": "alpha"})] == [ids[0], ids[2]]
    assert [d["id"] for d in await listed({"limit": 1})] == [ids[0]]
    assert await listed({"worker": "gamma"}) == []

    shown = _ok(await _call(bus, "dlq_show", json.dumps({"id": ids[1]}).encode()))
    assert _reply_errors(schema, "dlq_show", shown) == []
    assert shown["id"] == ids[1]
    assert json.loads(shown["letter"]["payload"]) == {"n": 11}
    assert shown["letter"]["stream_seq"] == 11 and shown["letter"]["worker"] == "beta"
    code, message = _error(await _call(bus, "dlq_show", b'{"id": 9999}'))
    assert code == 404 and "9999" in message
    for name, bad in (("dlq_list", b'{"worker": "a.*"}'), ("dlq_list", b'{"limit": 0}')):
        assert _error(await _call(bus, name, bad))[0] == 400, bad
    assert _error(await _call(bus, "dlq_purge", b'{"worker": ">"}'))[0] == 400

    purged = _ok(await _call(bus, "dlq_purge", b'{"worker": "alpha"}'))
    assert _reply_errors(schema, "dlq_purge", purged) == []
    assert purged == {"purged": 2}
    assert [d["worker"] for d in await listed({})] == ["beta"]
    assert _ok(await _call(bus, "dlq_purge", b"{}")) == {"purged": 1}
    assert await listed({}) == []
    assert _error(await _call(bus, "dlq_show", json.dumps({"id": ids[1]}).encode()))[0] == 404
