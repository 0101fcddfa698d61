"""HealthRunner sweeps against real local servers: statuses, events, one batched write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from ctrlplane.checks.registry import builtin_checkers, close_checkers
from ctrlplane.declarations import InstanceDecl
from ctrlplane.store import Store
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Checker
from ctrlplane.workers.health_runner import HealthRunner
from tests.helpers import make_instance, serving, sqlite_connection


class Target:
    """A local HTTP server whose answer the test flips."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="hi")


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    app = web.Application()
    app.router.add_get("/", t.handle)
    async with serving(app) as t.port:
        yield t


@pytest_asyncio.fixture
async def checkers() -> AsyncIterator[dict[str, Checker]]:
    c = builtin_checkers()
    try:
        yield c
    finally:
        await close_checkers(c)


async def _instance(store: Store, checks: list[dict[str, object]], name: str = "web") -> Instance:
    decl = msgspec.convert({"name": name, "command": ["x"], "checks": checks}, InstanceDecl)
    instance = make_instance(name, decl.command, id=f"i-{name}")
    await store.instances.put(instance)
    await store.health.set_checks(instance.id, decl.checks)
    return instance


async def test_a_flapping_target_gives_only_the_transitions_thresholds_allow(
    store: Store, target: Target, checkers: dict[str, Checker]
) -> None:
    await _instance(
        store,
        [
            {
                "name": "http",
                "target": f"http://127.0.0.1:{target.port}/",
                "failure_threshold": 2,
                "success_threshold": 2,
            }
        ],
    )
    runner = HealthRunner(store, checkers)
    sequence = [200, 200, 503, 200, 503, 503, 200, 503, 200, 200]
    seen: list[tuple[str, str, str]] = []
    for status in sequence:
        target.status = status
        for event in await runner.sweep():
            seen.append((event.type, event.data["previous"], event.data["current"]))
    assert seen == [
        ("health.passed", "unknown", "healthy"),
        ("health.failed", "healthy", "unhealthy"),
        ("health.recovered", "unhealthy", "healthy"),
    ]
    results = await store.health.results("i-web", "http", limit=100)
    assert len(results) == len(sequence)
    assert results[0].message == "200 OK"
    assert results[2].message.startswith("503")  # newest first: the 8th sweep


async def test_statuses_of_every_kind_in_one_sweep(
    store: Store, target: Target, checkers: dict[str, Checker]
) -> None:
    url = f"http://127.0.0.1:{target.port}/"
    target.delay = 0.15
    await _instance(
        store,
        [
            {"name": "ok", "target": url},
            {"name": "slow", "target": url, "latency_threshold": timedelta(milliseconds=50)},
            {"name": "malformed", "target": "not a url"},
            {
                "name": "timeout",
                "target": url,
                "timeout": timedelta(milliseconds=50),
                "failure_threshold": 1,
            },
            {"name": "plugin", "type": "carrier-pigeon", "target": "x"},
        ],
    )
    events = await HealthRunner(store, checkers).sweep()
    states = {s.name: s for s in await store.health.states("i-web")}
    assert {n: s.status for n, s in states.items()} == {
        "ok": HealthStatus.HEALTHY,
        "slow": HealthStatus.DEGRADED,
        "malformed": HealthStatus.UNKNOWN,
        "timeout": HealthStatus.UNHEALTHY,
        "plugin": HealthStatus.UNKNOWN,
    }
    assert "slow:" in (states["slow"].last_message or "")
    assert "timed out" in (states["timeout"].last_message or "")
    assert "carrier-pigeon" in (states["plugin"].last_message or "")
    assert states["malformed"].last_message
    assert sorted(e.type for e in events) == ["health.degraded", "health.failed", "health.passed"]
    failed = next(e for e in events if e.type == "health.failed")
    assert failed.instance_id == "i-web"
    assert failed.data["name"] == "web" and failed.data["check"] == "timeout"


async def test_stopped_instances_are_not_checked(
    store: Store, target: Target, checkers: dict[str, Checker]
) -> None:
    instance = await _instance(
        store, [{"name": "ok", "target": f"http://127.0.0.1:{target.port}/"}]
    )
    await store.instances.set_state(instance.id, InstanceState.STOPPED)
    assert await HealthRunner(store, checkers).sweep() == []
    assert await store.health.results(instance.id) == []


# SQLite only: it reads the statements from SQLite's trace.
@pytest.mark.sqlite_only
async def test_a_sweep_is_one_transaction(
    store: Store, target: Target, checkers: dict[str, Checker]
) -> None:
    url = f"http://127.0.0.1:{target.port}/"
    for n in range(20):
        await _instance(
            store, [{"name": "a", "target": url}, {"name": "b", "target": url}], f"w{n}"
        )
    statements: list[str] = []
    await sqlite_connection(store).set_trace_callback(statements.append)
    await HealthRunner(store, checkers, concurrency=8).sweep()
    await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert len(await store.health.states()) == 40
    assert all(s.status is HealthStatus.HEALTHY for s in await store.health.states())


# SQLite only: it reads the statements from SQLite's trace.
@pytest.mark.sqlite_only
async def test_a_sweep_that_changes_nothing_writes_results_only(
    store: Store, target: Target, checkers: dict[str, Checker]
) -> None:
    url = f"http://127.0.0.1:{target.port}/"
    await _instance(store, [{"name": "a", "target": url}, {"name": "b", "target": url}])
    runner = HealthRunner(store, checkers)
    assert len(await runner.sweep()) == 2  # unknown -> healthy: states written
    statements: list[str] = []
    await sqlite_connection(store).set_trace_callback(statements.append)
    assert await runner.sweep() == []
    await store.flush()
    await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]
    assert not [s for s in statements if s.startswith("UPDATE health_checks")]
    assert [s for s in statements if s.startswith("INSERT INTO health_results")]
    # The last result is still what `ctrlplane health` shows.
    states = {s.name: s for s in await store.health.states("i-web")}
    assert states["a"].last_message == "200 OK"
    assert states["a"].last_checked is not None
    assert states["a"].consecutive_passes == 1  # capped at success_threshold
