"""HealthRunner sweeps against real local servers: statuses, events, one batched write."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from ctrlplane.bus.connection import Bus
from ctrlplane.checks.registry import builtin_checkers, close_checkers
from ctrlplane.cluster.nodes import NodeRegistry
from ctrlplane.cluster.shards import owner
from ctrlplane.cluster.types import NodeView
from ctrlplane.declarations import InstanceDecl
from ctrlplane.store import Store
from ctrlplane.store.health import CheckSpec, HealthStatus
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Checker, Probe
from ctrlplane.workers.health_runner import HealthRunner
from tests.helpers import FixedNodes, make_instance, serving, sqlite_connection, wait_for


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


# ---------------------------------------------------------------------------
# Sharded sweeps: each node sweeps its shard; together, every check once.

NODES = ["node-a", "node-b", "node-c"]
INSTANCES = 60


class _Counted:
    """A real checker that also notes which node ran which check."""

    def __init__(self, real: Checker, node: str, ran: list[tuple[str, str, str]]) -> None:
        self.type = real.type
        self._real = real
        self._node = node
        self._ran = ran

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        self._ran.append((self._node, instance.id, spec.name))
        return await self._real.check(spec, instance)


class Fleet:
    """Instances with an HTTP and a TCP check each, against local servers
    that count what reached them; a third placed on a node each, the rest
    on none."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.ran: list[tuple[str, str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.match_info["id"]] += 1
        return web.Response(text="ok")

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def add(self, http_port: int, tcp_port: int) -> None:
        for n in range(INSTANCES):
            checks = [
                {"name": "http", "target": f"http://127.0.0.1:{http_port}/i/i-{n:03d}"},
                {"name": "tcp", "type": "tcp", "target": f"127.0.0.1:{tcp_port}"},
            ]
            raw = {"name": f"w{n:03d}", "command": ["x"], "checks": checks}
            decl = msgspec.convert(raw, InstanceDecl)
            node = NODES[n % 3] if n % 2 else None
            instance = msgspec.structs.replace(
                make_instance(decl.name, decl.command, id=f"i-{n:03d}"), node=node
            )
            await self.store.instances.put(instance)
            await self.store.health.set_checks(instance.id, decl.checks)

    def runners(
        self, checkers: dict[str, Checker], views: Sequence[NodeView]
    ) -> list[HealthRunner]:
        return [
            HealthRunner(
                self.store,
                {t: _Counted(c, view.name, self.ran) for t, c in checkers.items()},
                nodes=view,
            )
            for view in views
        ]

    async def interval(self, runners: list[HealthRunner]) -> list[tuple[str, str, str]]:
        """One interval: every node's sweep once, at once. What ran where."""
        self.hits.clear()
        self.connections = 0
        self.ran.clear()
        await asyncio.gather(*(r.sweep() for r in runners))
        return list(self.ran)


@pytest_asyncio.fixture
async def fleet(store: Store) -> AsyncIterator[Fleet]:
    f = Fleet(store)
    app = web.Application()
    app.router.add_get("/i/{id}", f.handle)
    tcp = await asyncio.start_server(f.accept, "127.0.0.1", 0)
    try:
        async with serving(app) as http_port:
            await f.add(http_port, tcp.sockets[0].getsockname()[1])
            yield f
    finally:
        tcp.close()
        await tcp.wait_closed()


def _assert_each_check_once(fleet: Fleet, ran: list[tuple[str, str, str]]) -> None:
    ids = [f"i-{n:03d}" for n in range(INSTANCES)]
    assert Counter((i, c) for _, i, c in ran) == Counter(
        (i, c) for i in ids for c in ("http", "tcp")
    )
    # What the targets saw, not only what the runners meant to do.
    assert fleet.hits == Counter(ids)
    assert fleet.connections == INSTANCES


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_a_sharded_sweep_covers_every_check_once_per_interval(
    fleet: Fleet, checkers: dict[str, Checker], count: int
) -> None:
    live = NODES[:count]
    runners = fleet.runners(checkers, [FixedNodes(n, live) for n in live])
    for _ in range(2):  # each interval alike
        ran = await fleet.interval(runners)
        _assert_each_check_once(fleet, ran)
    placed = {i.id: i.node for i in await fleet.store.instances.all()}
    for node, instance_id, _ in ran:
        where = placed[instance_id]
        # On its node while that node lives; spread by hash otherwise.
        assert node == (where if where in live else owner(instance_id, live))
    # Every live node takes a share.
    assert {node for node, _, _ in ran} == set(live)
    # One batched write per node's sweep, and a result per check in the store.
    results = await fleet.store.health.results("i-007", "http", limit=10)
    assert len(results) == 2


async def test_a_dead_nodes_share_moves_at_the_next_sweep_and_nothing_else_moves(
    fleet: Fleet, checkers: dict[str, Checker]
) -> None:
    views = [FixedNodes(n, NODES) for n in NODES]
    runners = fleet.runners(checkers, views)
    before = {(i, c): node for node, i, c in await fleet.interval(runners)}
    # node-c stops heartbeating: the live views of a and b drop it, and its
    # own runner sweeps no more.
    for view in views[:2]:
        view.alive.remove("node-c")
    ran = await fleet.interval(runners[:2])
    _assert_each_check_once(fleet, ran)
    after = {(i, c): node for node, i, c in ran}
    moved = {k for k in after if after[k] != before[k]}
    assert moved == {k for k, node in before.items() if node == "node-c"}
    assert moved
    # The instances placed on node-c are among them, checked on a live node.
    on_c = {i.id for i in await fleet.store.instances.all() if i.node == "node-c"}
    assert {i for i, _ in moved} >= on_c


async def test_with_the_node_registry_a_stopped_nodes_share_moves_once_it_is_dead(
    fleet: Fleet, checkers: dict[str, Checker], bus: Bus
) -> None:
    # The real heartbeats, with a short timeout: a node is dead 2 s after
    # its last beat, and the next sweep of each live node takes its share.
    timeout, every = timedelta(seconds=2), timedelta(milliseconds=200)
    registries = [
        NodeRegistry(bus, node=n, process=f"h:{k}", store_id="s", timeout=timeout, every=every)
        for k, n in enumerate(NODES)
    ]
    for registry in registries:
        await registry.start()
    try:
        await wait_for(lambda: all(r.live() == NODES for r in registries))
        runners = fleet.runners(checkers, registries)
        before = {(i, c): node for node, i, c in await fleet.interval(runners)}
        _assert_each_check_once(fleet, list(fleet.ran))
        await registries[2].stop()
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await wait_for(lambda: all(r.live() == NODES[:2] for r in registries[:2]), within=15)
        # Dead within the timeout and a few beats' slack, not later.
        assert loop.time() - stopped < timeout.total_seconds() + 3
        ran = await fleet.interval(runners[:2])
        _assert_each_check_once(fleet, ran)
        after = {(i, c): node for node, i, c in ran}
        assert {k for k in after if after[k] != before[k]} == {
            k for k, node in before.items() if node == "node-c"
        }
    finally:
        for registry in registries[:2]:
            await registry.stop()
