"""``describe`` (ctrlplane/api/describe.py) and ``ctrlplane describe instance``
(ctrlplane/cli/describe.py), against a real control plane, NATS and SQLite."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import msgspec
import psutil
import pytest
import pytest_asyncio
from referencing import Registry, Resource

from ctrlplane.api import RemoteError, api_schema, request
from ctrlplane.api import describe as describe_module
from ctrlplane.api.describe import recent_events
from ctrlplane.api.messages import DescribeReply, DescribeRequest
from ctrlplane.app import ControlPlane
from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.server import ServerInfo
from ctrlplane.config import Config
from ctrlplane.declarations import InstanceDecl
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import InstanceSpec, InstanceState
from tests.helpers import wait_for
from tests.processes import env_for, run_cli
from tests.test_reconciler import free_port

SCHEMA_ID = "urn:test:ctrlplane-api"


def _decls(port: int) -> list[InstanceDecl]:
    return msgspec.convert(
        [
            {
                "name": "web",
                "command": [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                "env": {"GREETING": "hi"},
                "ports": [port],
                "checks": [{"name": "http", "type": "http", "target": f"http://127.0.0.1:{port}/"}],
            },
            {"name": "idle", "command": ["sleep", "30"], "desired_state": "stopped"},
        ],
        list[InstanceDecl],
    )


@pytest_asyncio.fixture
async def plane(config: Config) -> AsyncIterator[ControlPlane]:
    """A control plane on the test server that runs ``web`` (healthy once
    checked) and records ``idle`` stopped."""
    cfg = msgspec.structs.replace(
        config, health_interval=timedelta(seconds=1), instances=_decls(free_port())
    )
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        try:
            if cp.inventory is not None:
                # No instance process may outlive the test.
                await cp.inventory.apply([])
        finally:
            await cp.stop()


async def _describe(bus: Bus, name: str, events: int = 10) -> DescribeReply:
    body = DescribeRequest(instance=name, events=events)
    return await request(bus, "describe", body, DescribeReply, within=10)


async def _healthy(bus: Bus) -> DescribeReply:
    got: list[DescribeReply] = []

    async def checked() -> bool:
        got.append(await _describe(bus, "web"))
        return got[-1].health is HealthStatus.HEALTHY

    await wait_for(checked, within=30, interval=0.2)
    return got[-1]


def _valid(answer: object, bus: Bus) -> list[str]:
    schema = api_schema(bus.subjects)
    registry: Registry[Any] = Registry().with_resource(SCHEMA_ID, Resource.from_contents(schema))
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{SCHEMA_ID}#/properties/describe/properties/reply"}, registry=registry
    )
    return [e.message for e in validator.iter_errors(answer)]


async def test_describe_shows_spec_process_checks_deployment_and_events(
    plane: ControlPlane, bus: Bus
) -> None:
    d = await _healthy(bus)
    assert (d.name, d.provider, d.state, d.desired) == ("web", "process", "running", "running")
    assert d.node == plane.config.node
    web = await plane.store.instances.get("web")
    assert d.id == web.id and d.spec_hash == web.spec_hash and d.handle == web.handle
    # Every field of the spec, defaults included.
    assert d.spec == InstanceSpec(
        command=web.spec.command, env={"GREETING": "hi"}, ports=web.spec.ports
    )
    # The pid is the live process's, and so is its start: uptime is the process's.
    assert web.handle is not None and d.pid == int(web.handle.split(":")[0])
    created = datetime.fromtimestamp(psutil.Process(d.pid).create_time(), UTC)
    assert d.started is not None and abs(d.started - created) < timedelta(seconds=1)
    assert d.uptime is not None and timedelta(0) <= d.uptime < timedelta(minutes=2)
    assert d.restarts == 0 and d.last_restart is None
    (check,) = d.checks
    assert (check.check, check.type, check.status) == ("http", "http", HealthStatus.HEALTHY)
    assert check.last_message == "200 OK" and check.last_latency is not None
    assert check.last_checked is not None
    assert d.deployment is not None and d.deployment.state == "succeeded"
    assert d.deployment.spec_hash == d.spec_hash
    # Its own events only, newest first.
    types = [e.type for e in d.events]
    assert {"instance.created", "instance.started", "health.passed"} <= set(types)
    assert types[-1] == "instance.created"
    assert all(e.subject == "web" for e in d.events)
    times = [e.time for e in d.events]
    assert times == sorted(times, reverse=True)
    assert len((await _describe(bus, "web", events=2)).events) == 2
    assert (await _describe(bus, "web", events=0)).events == []
    # By id too; and the answer is what `ctrlplane schema api` says.
    raw = await bus.nc.request(bus.subjects.api("describe"), b'{"instance": "%s"}' % d.id.encode())
    answer = json.loads(raw.data)
    assert answer["name"] == "web" and _valid(answer, bus) == []
    assert "state_error" not in answer  # absent, never null


async def test_describe_counts_the_remediators_restarts_and_omits_a_stopped_ones_uptime(
    plane: ControlPlane, bus: Bus
) -> None:
    web = await plane.store.instances.get("web")
    first = datetime.now(UTC) - timedelta(minutes=3)
    last = datetime.now(UTC) - timedelta(minutes=1)
    # What the remediator records when it restarts an unhealthy instance.
    for at in (first, last):
        await plane.store.instances.record_restart(web.id, at)
    d = await _describe(bus, "web")
    assert d.restarts == 2
    assert d.last_restart is not None and abs(d.last_restart - last) < timedelta(milliseconds=1)
    idle = await _describe(bus, "idle")
    assert idle.state is InstanceState.STOPPED and idle.checks == []
    assert idle.pid is None and idle.started is None and idle.uptime is None
    assert idle.health is HealthStatus.UNKNOWN and idle.restarts == 0


async def test_an_unknown_instance_is_a_404_naming_the_closest(
    plane: ControlPlane, bus: Bus
) -> None:
    with pytest.raises(RemoteError) as info:
        await _describe(bus, "wbe")
    assert info.value.code == 404
    assert info.value.message == "no instance 'wbe': did you mean 'web'?"
    with pytest.raises(RemoteError, match=r"^no instance 'zzzzzz'$"):
        await _describe(bus, "zzzzzz")
    with pytest.raises(RemoteError) as bad:
        await request(bus, "describe", {"instance": "web", "events": 101}, DescribeReply, within=5)
    assert bad.value.code == 400


async def test_recent_events_step_back_a_window_at_a_time_up_to_the_cap(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    # Matched by subject (the name) or by instance id, whatever the type.
    about = [
        Event(type="test.one", source="test", subject="a", data={"n": 1}),
        Event(type="test.two", source="test", instance_id="i-a", data={"n": 2}),
    ]
    for ev in about:
        await bus.publish_event(ev)
    for _ in range(5):
        await bus.publish_event(Event(type="test.noise", source="test", subject="b", data={}))
    whole = await recent_events(bus, name="a", instance_id="i-a", limit=10)
    assert [e.id for e in whole] == [about[1].id, about[0].id]
    # Windows of two: four steps back to reach them.
    monkeypatch.setattr(describe_module, "SCAN_WINDOW", 2)
    stepped = await recent_events(bus, name="a", instance_id="i-a", limit=10)
    assert [e.id for e in stepped] == [e.id for e in whole]
    assert [e.id for e in await recent_events(bus, name="a", instance_id="i-a", limit=1)] == [
        about[1].id
    ]
    # Only the newest SCAN_MAX events are looked at.
    monkeypatch.setattr(describe_module, "SCAN_MAX", 6)
    capped = await recent_events(bus, name="a", instance_id="i-a", limit=10)
    assert [e.id for e in capped] == [about[1].id]


def _field(line: str) -> tuple[str, str]:
    found = re.fullmatch(r"(\w[\w ]*):\s+(.*)", line)
    assert found is not None, line
    return found[1], found[2]


async def test_the_cli_prints_sections_aligned_and_json(
    plane: ControlPlane, bus: Bus, nats_server: ServerInfo
) -> None:
    await _healthy(bus)
    web = await plane.store.instances.get("web")
    await plane.store.instances.record_restart(web.id, datetime.now(UTC))
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=bus.subjects.prefix)
    at = ["--nats-url", nats_server.client_url]

    out = await asyncio.to_thread(run_cli, ["describe", "instance", "web", *at], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = lines[: lines.index("Spec:")]
    fields = dict(_field(line) for line in head)
    assert fields["Name"] == "web" and fields["State"] == "running"
    assert fields["Node"] == plane.config.node and fields["Health"] == "healthy"
    assert web.handle is not None and fields["PID"] == web.handle.split(":")[0]
    assert fields["Restarts"].startswith("1 (last ") and fields["Uptime"] != "-"
    # The values of a block start in one column.
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in head}) == 1
    for section in ("Spec:", "Deployment:", "Checks:", "Events:"):
        assert section in lines
    spec = lines[lines.index("Spec:") + 1 : lines.index("Deployment:")]
    assert any(line.split() == ["Env:", "GREETING=hi"] for line in spec)
    checks = lines[lines.index("Checks:") + 1 : lines.index("Events:")]
    assert checks[0].split()[:3] == ["NAME", "TYPE", "STATUS"]
    assert checks[1].split()[:3] == ["http", "http", "healthy"] and "200 OK" in checks[1]
    events = lines[lines.index("Events:") + 1 :]
    assert events[0].split() == ["TIME", "TYPE", "SOURCE", "DATA"]
    assert any(" instance.created " in line for line in events[1:])
    # Columns line up: each type starts where the header's TYPE does.
    column = events[0].index("TYPE")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in events[1:])

    js = await asyncio.to_thread(run_cli, ["describe", "instance", "web", "--json", *at], env)
    assert js.returncode == 0, js.stderr
    answer = json.loads(js.stdout)
    assert answer["name"] == "web" and answer["restarts"] == 1 and _valid(answer, bus) == []

    typo = await asyncio.to_thread(run_cli, ["describe", "instance", "wbe", *at], env)
    assert typo.returncode == 1
    assert typo.stderr.strip() == "ctrlplane: no instance 'wbe': did you mean 'web'?"
