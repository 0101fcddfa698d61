"""Placement and failover end to end: two nodes' inventories and reconcilers on one
store (a shared SQLite file), real processes through the process provider, real NATS.

Each node has its own data dir, as each host of a cluster has, so each process
provider keeps its own record of what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import msgspec
import pytest
import pytest_asyncio
import structlog

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.actors.runs import Trigger
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.cluster.remote import (
    Action,
    LifecycleReply,
    LifecycleRequest,
    NodeLifecycle,
    RemoteLifecycle,
    lifecycle_subject,
)
from ctrlplane.declarations import InstanceDecl
from ctrlplane.events import event_schema
from ctrlplane.inventory import Inventory, InventoryError
from ctrlplane.providers import ProcessProvider
from ctrlplane.store import Store
from ctrlplane.store.instances import DesiredState, Instance, InstanceState
from ctrlplane.workers.reconciler import Reconciler
from ctrlplane.workers.remediator import Remediator
from tests.helpers import FixedNodes, make_instance, reap_instances, subscribe_events, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


@dataclass
class Node:
    """One node of the test cluster: its view, store connection, provider and workers."""

    view: FixedNodes
    store: Store
    provider: ProcessProvider
    inventory: Inventory
    reconciler: Reconciler
    published: list[Event]
    """Every event this node published (its inventory's and its reconciler's)."""
    publish: Callable[[Event], Awaitable[int]]
    server: NodeLifecycle
    """Takes the lifecycle requests other nodes send for this node's instances."""

    @property
    def name(self) -> str:
        return self.view.name

    async def reconcile(self) -> None:
        """One tick of this node's reconciler."""
        await self.reconciler.run(
            RunContext(
                worker="reconciler",
                run_id=f"{self.name}-run",
                trigger=Trigger.TICK,
                attempt=1,
                publish=self.publish,
                log=structlog.get_logger().bind(node=self.name),
            )
        )

    async def local(self, name: str) -> str | None:
        """The handle of this host's running process of instance ``name``."""
        instance = await self.store.instances.get(name)
        return (await self.provider.local_instances()).get(instance.id)


class MakeNode(Protocol):
    async def __call__(self, name: str, live: list[str], *, remote: bool = True) -> Node: ...


@pytest_asyncio.fixture
async def cluster(bus: Bus, tmp_path: Path, store_location: Path | str) -> AsyncIterator[MakeNode]:
    """Builds nodes on one shared store (a SQLite file, then a PostgreSQL
    database); kills every process they started."""
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    nodes: list[Node] = []
    servers: list[NodeLifecycle] = []

    async def make(name: str, live: list[str], *, remote: bool = True) -> Node:
        view = FixedNodes(name, live)
        store = Store(store_location, flush_interval=timedelta(milliseconds=20))
        await store.open()
        # Each process its own data dir, as each host (or process) of a cluster has.
        provider = ProcessProvider(tmp_path / f"{name}-{len(nodes)}")
        published: list[Event] = []

        async def publish(event: Event) -> int:
            published.append(event)
            return await bus.publish_event(event)

        inventory = Inventory(
            store,
            {"process": provider},
            publish,
            source=f"node-{name}",
            stop_grace=timedelta(seconds=2),
            nodes=view,
            remote=RemoteLifecycle(bus, stop_grace=timedelta(seconds=2)) if remote else None,
        )
        server = NodeLifecycle(bus, store, inventory, name)
        await server.start()
        servers.append(server)
        reconciler = Reconciler(
            store,
            {"process": provider},
            nodes=view,
            inventory=inventory,
            stop_grace=timedelta(seconds=2),
            handoff_grace=timedelta(0),
        )
        node = Node(view, store, provider, inventory, reconciler, published, publish, server)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()
        for node in nodes:
            # Every process a provider started is its child: kill and reap them
            # all, the ones another node's copy replaced too.
            for child in node.provider._children.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait(timeout=10)
        for node in nodes:
            await node.store.close()


def decl(name: str, **kw: object) -> InstanceDecl:
    return msgspec.convert({"name": name, "command": SLEEPER, **kw}, InstanceDecl)


def of_type(events: list[Event], type_: str, name: str | None = None) -> list[Event]:
    return [e for e in events if e.type == type_ and (name is None or e.data["name"] == name)]


def pid(handle: str | None) -> int:
    assert handle is not None
    return int(handle.split(":")[0])


def alive(handle: str | None) -> bool:
    try:
        os.kill(pid(handle), 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid(handle)}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")


async def running(node: Node, name: str) -> Instance:
    instance = await node.store.instances.get(name)
    assert instance.state is InstanceState.RUNNING, instance
    assert alive(instance.handle)
    return instance


async def test_apply_twice_through_either_node_makes_one_instance_started_once(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    # At once through both nodes, as two replicas answering two requests would.
    first, again = await asyncio.gather(
        a.inventory.apply([decl("web")]), b.inventory.apply([decl("web")])
    )
    third = await a.inventory.apply([decl("web")])
    for _ in range(3):
        await a.reconcile()
        await b.reconcile()

    assert sorted(first.created + again.created) == ["web"]
    assert sorted(first.unchanged + again.unchanged + third.unchanged) == ["web", "web"]
    assert first.errors == again.errors == third.errors == []
    assert [i.name for i in await a.store.instances.all()] == ["web"]
    web = await running(a, "web")
    # The fewest instances, ties by name: a; started there once, by a's apply.
    assert web.node == "a"
    assert len(of_type(a.published + b.published, "instance.started")) == 1
    assert await a.local("web") == web.handle and await b.local("web") is None


async def test_an_instance_of_a_provider_not_host_bound_is_reconciled_by_one_node(
    cluster: MakeNode,
) -> None:
    live = ["a", "b", "c"]
    nodes = [await cluster(n, live) for n in live]
    # No provider of that name here: not host-bound, so not placed on a node.
    elsewhere = [make_instance(f"svc-{n}", provider="cloud-vm") for n in range(12)]
    for instance in elsewhere:
        assert instance.node is None
        owners = [n.view.name for n in nodes if n.reconciler._mine(instance)]
        assert len(owners) == 1, (instance.id, owners)
    # Spread, not all on one node; and a dead node's share moves to the others.
    spread = {n.view.name for i in elsewhere for n in nodes if n.reconciler._mine(i)}
    assert len(spread) > 1
    for n in nodes:
        n.view.alive = ["a", "b"]
    for instance in elsewhere:
        owners = [n.view.name for n in nodes[:2] if n.reconciler._mine(instance)]
        assert len(owners) == 1


async def test_a_new_instance_goes_to_the_emptiest_node_whose_reconciler_starts_it(
    cluster: MakeNode,
) -> None:
    # Without a way to ask b, a leaves b's new instance for b's reconciler.
    a = await cluster("a", ["a", "b"], remote=False)
    b = await cluster("b", ["a", "b"], remote=False)

    result = await a.inventory.apply([decl("one"), decl("two"), decl("three", node="a")])

    assert result.errors == []
    placed = {i.name: i.node for i in await a.store.instances.all()}
    # "three" is declared on a; the others are spread, the fewest first.
    assert placed == {"one": "a", "two": "b", "three": "a"}
    # a started its own two; "two" waits for b, which alone may start it.
    assert (await a.store.instances.get("two")).state is InstanceState.PROVISIONING
    await a.reconcile()
    assert (await a.store.instances.get("two")).state is InstanceState.PROVISIONING
    await b.reconcile()
    two = await running(b, "two")
    assert await b.local("two") == two.handle and await a.local("two") is None
    deployments = await b.store.deployments.list(instance="two")
    assert [d.state.value for d in deployments] == ["succeeded"]

    # Another node's instance is not this node's to stop, change or restart.
    with pytest.raises(InventoryError, match="placed on node 'b'"):
        await a.inventory.stop(two)
    changed = await a.inventory.apply(
        [decl("one"), decl("two", env={"X": "1"}), decl("three", node="a")]
    )
    assert len(changed.errors) == 1 and "node 'b'" in changed.errors[0]
    assert (await running(b, "two")).handle == two.handle


async def test_changes_through_any_node_are_carried_out_by_the_instances_own_node(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    everything = [decl("one"), decl("two")]

    created = await a.inventory.apply(everything)

    assert created.errors == []
    two = await running(b, "two")
    assert (two.node, await b.local("two"), await a.local("two")) == ("b", two.handle, None)
    assert len(of_type(b.published, "instance.started", "two")) == 1
    assert of_type(a.published, "instance.started", "two") == []

    # A changed spec through a: rolled out by b, on b's host.
    changed = await a.inventory.apply([decl("one"), decl("two", env={"X": "1"})])
    assert (changed.updated, changed.errors) == (["two"], [])
    rolled = await running(b, "two")
    assert rolled.handle != two.handle and not alive(two.handle)
    assert await b.local("two") == rolled.handle and await a.local("two") is None
    deployments = await a.store.deployments.list(instance="two")
    assert [d.state.value for d in deployments] == ["succeeded", "succeeded"]

    # Stopped and removed through a: by b.
    stopped = await a.inventory.stop(rolled)
    assert stopped.state is InstanceState.STOPPED and not alive(rolled.handle)
    await a.inventory.start(stopped)
    again = await running(b, "two")
    removed = await a.inventory.apply([decl("one")])
    assert (removed.removed, removed.errors) == (["two"], [])
    assert not alive(again.handle)
    assert [i.name for i in await a.store.instances.all()] == ["one"]


async def test_a_change_to_an_unreachable_nodes_instance_fails_with_its_name(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="b")])
    web = await running(b, "web")
    # b's control plane is gone, but the registry has not yet called it dead.
    await b.server.stop()

    with pytest.raises(InventoryError, match="its node 'b' is not reachable"):
        await a.inventory.stop(web)


async def test_a_drift_on_another_nodes_instance_is_remedied_by_that_node(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="b")])
    web = await running(b, "web")
    os.killpg(pid(web.handle), signal.SIGKILL)

    async def dead() -> bool:
        return (await b.provider.status([web]))[web.id].state is not InstanceState.RUNNING

    await wait_for(dead, within=10)
    await b.reconcile()  # b sees its process gone: drift, recorded failed
    [drift] = of_type(b.published, "instance.drift", "web")

    # The drift event reaches a's remediator (events go to any process).
    remediator = Remediator(a.store, a.inventory)
    await remediator.run(
        RunContext(
            worker="remediator",
            run_id="r1",
            trigger=Trigger.EVENT,
            attempt=1,
            publish=a.publish,
            log=structlog.get_logger(),
            event=drift,
        )
    )

    back = await running(b, "web")
    assert back.handle != web.handle and await b.local("web") == back.handle
    [restarted] = of_type(b.published, "instance.restarted", "web")
    assert restarted.data["attempt"] == 1
    assert await a.local("web") is None


async def test_a_node_refuses_bad_requests_and_other_nodes_instances(
    cluster: MakeNode, bus: Bus
) -> None:
    a = await cluster("a", ["a", "b"])
    await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="a")])
    web = await running(a, "web")

    async def ask(payload: bytes) -> LifecycleReply:
        msg = await bus.nc.request(lifecycle_subject(bus, "b"), payload, timeout=10)
        return msgspec.json.decode(msg.data, type=LifecycleReply)

    garbage = await ask(b"[" * 10_000)
    assert garbage.error is not None and garbage.error.startswith("bad lifecycle request")
    request = LifecycleRequest(action=Action.STOP, instance_id=web.id)
    wrong = await ask(msgspec.json.encode(request))
    assert wrong.error is not None and "placed on node 'a'" in wrong.error
    assert (await running(a, "web")).handle == web.handle


async def test_of_two_processes_of_one_node_one_acts_on_a_request(
    cluster: MakeNode, bus: Bus
) -> None:
    a = await cluster("a", ["a", "b"])
    b1 = await cluster("b", ["a", "b"])
    # A second process of node b: same host, its own data dir, its own server.
    b2 = await cluster("b", ["a", "b"])
    assert b2.provider is not b1.provider
    await a.inventory.apply([decl("web", node="b")])

    web = await a.store.instances.get("web")
    assert web.state is InstanceState.RUNNING and alive(web.handle)
    started = of_type(b1.published + b2.published, "instance.started", "web")
    assert len(started) == 1
    assert [await b1.local("web"), await b2.local("web")].count(web.handle) == 1


async def test_a_declared_node_must_be_a_live_node(
    cluster: MakeNode,
) -> None:
    a = await cluster("a", ["a", "b"])
    with pytest.raises(InventoryError, match="'c' is not a live node"):
        await a.inventory.apply([decl("web", node="c")])
    with pytest.raises(InventoryError, match=r"instances\[0\]\.node"):
        await a.inventory.apply([decl("web", node="Not A Node")])
    assert await a.store.instances.all() == []


async def test_nodes_that_disagree_on_who_is_live_never_both_take_an_instance(
    cluster: MakeNode,
) -> None:
    a, b, c = (
        await cluster("a", ["a", "b", "c"]),
        await cluster("b", ["a", "b", "c"]),
        await cluster("c", ["a", "b", "c"]),
    )
    names = [f"w{n}" for n in range(6)]
    await c.inventory.apply([decl(n, node="c") for n in names])
    # c is gone, and a has not heard from b yet: a plans to take all six, b
    # its half. Only the conditional placement keeps them apart.
    a.view.alive, b.view.alive = ["a"], ["a", "b"]
    for handle in [i.handle for i in await a.store.instances.all()]:
        os.killpg(pid(handle), signal.SIGKILL)

    await asyncio.gather(a.reconcile(), b.reconcile())

    rescheduled = of_type(a.published + b.published, "instance.rescheduled")
    assert sorted(e.data["name"] for e in rescheduled) == names
    # Each instance started once more, by the one node that won it, and runs there only.
    started = of_type(a.published + b.published, "instance.started")
    assert sorted(e.data["name"] for e in started) == names
    for instance in await a.store.instances.all():
        owner, other = (a, b) if instance.node == "a" else (b, a)
        assert instance.state is InstanceState.RUNNING and alive(instance.handle)
        assert await owner.local(instance.name) == instance.handle
        assert await other.local(instance.name) is None

    # Once their views agree again, nothing moves.
    a.view.alive = b.view.alive = ["a", "b"]
    await asyncio.gather(a.reconcile(), b.reconcile())
    assert len(of_type(a.published + b.published, "instance.rescheduled")) == len(names)
    assert len(of_type(a.published + b.published, "instance.started")) == len(names)


async def test_a_silent_nodes_instances_move_and_it_lets_them_go_when_it_returns(
    cluster: MakeNode, bus: Bus
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply(
        [decl("web", node="a"), decl("idle", node="a", desired_state="stopped")]
    )
    old = await running(a, "web")

    # a goes silent (its heartbeats stop) but its process goes on: a partition.
    b.view.alive = ["b"]
    await b.reconcile()
    await b.reconcile()

    moved = await running(b, "web")
    assert moved.node == "b" and moved.handle != old.handle
    assert await b.local("web") == moved.handle
    [event] = of_type(b.published, "instance.rescheduled")
    assert (event.data, event.instance_id) == (
        {"name": "web", "from": "a", "to": "b"},
        old.id,
    )
    # What should stay stopped is not moved: nothing of it has to run.
    idle = await b.store.instances.get("idle")
    assert (idle.node, idle.state) == ("a", InstanceState.STOPPED)

    # a returns: it stops its own copy of what moved away, keeps the rest.
    b.view.alive = a.view.alive = ["a", "b"]
    assert alive(old.handle)
    await a.reconcile()
    assert not alive(old.handle) and await a.local("web") is None
    assert (await running(b, "web")).handle == moved.handle
    assert (await a.store.instances.get("idle")).node == "a"
    await a.reconcile()
    await b.reconcile()
    assert len(of_type(a.published + b.published, "instance.rescheduled")) == 1


async def test_an_instance_removed_while_its_node_was_silent_is_stopped_when_it_returns(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="a"), decl("api", node="a")])
    web = await running(a, "web")

    # a is silent; b removes web, which nobody can stop now.
    b.view.alive = ["b"]
    removed = await b.inventory.apply([decl("api", node="a")])
    assert (removed.removed, removed.errors) == (["web"], [])
    assert alive(web.handle)

    b.view.alive = a.view.alive = ["a", "b"]
    await a.reconcile()
    assert not alive(web.handle)
    # What is still a's runs on.
    api = await running(a, "api")
    assert await a.local("api") == api.handle


async def test_an_instance_placed_back_on_its_old_node_is_readopted_not_started_again(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="a"), decl("api", node="a")])
    web, api = await running(a, "web"), await running(a, "api")

    # a is cut off; b takes both over; then b dies with its copies, and a,
    # whose processes lived on, is the only node left.
    b.view.alive = ["b"]
    await b.reconcile()
    b_copies = [(await running(b, n)).handle for n in ("web", "api")]
    for handle in b_copies:
        os.killpg(pid(handle), signal.SIGKILL)
    a.view.alive = ["a"]
    await a.reconcile()

    for before in (web, api):
        back = await running(a, before.name)
        assert (back.node, back.handle) == ("a", before.handle)
    moves = [(e.data["from"], e.data["to"]) for e in of_type(a.published, "instance.rescheduled")]
    assert moves == [("b", "a"), ("b", "a")]


async def test_instances_recorded_before_placement_are_placed_on_the_first_reconcile(
    cluster: MakeNode,
) -> None:
    a, b = await cluster("a", ["a", "b"]), await cluster("b", ["a", "b"])
    await a.inventory.apply([decl("web", node="a"), decl("old", desired_state="stopped")])
    # As an instance recorded before nodes existed: no node.
    old = await a.store.instances.get("old")
    assert await a.store.instances.place(old.id, None, expect=old.node)
    await b.reconcile()
    old = await a.store.instances.get("old")
    assert (old.node, old.state, old.desired) == ("b", InstanceState.STOPPED, DesiredState.STOPPED)
    assert of_type(b.published, "instance.rescheduled") == []


def test_the_event_schema_has_rescheduled_with_from_and_to() -> None:
    schema = event_schema()
    [data] = [
        rule["then"]["properties"]["data"]
        for rule in schema["allOf"]
        if rule["if"]["properties"]["type"]["const"] == "instance.rescheduled"
    ]
    ref = data["$ref"].removeprefix("#/$defs/")
    assert set(schema["$defs"][ref]["properties"]) == {"name", "from", "to"}
    assert schema["$defs"][ref]["required"] == ["name", "to"]  # from: absent if never placed


# Whole control planes: the node registry's heartbeats decide who is dead.

NODE_TIMEOUT = timedelta(seconds=3)
RECONCILE = timedelta(seconds=1)


def node_config(config: Config, tmp_path: Path, node: str, store: Path | str) -> Config:
    """Node ``node`` of a cluster: its own data dir, the cluster's store."""
    return msgspec.structs.replace(
        config,
        node=node,
        data_dir=tmp_path / node,
        store_url=store if isinstance(store, str) else f"sqlite://{store}",
        node_timeout=NODE_TIMEOUT,
        reconcile_interval=RECONCILE,
        # Only what failover needs: fewer writers on the one SQLite file.
        disabled_workers=[
            "audit_recorder",
            "health_runner",
            "telemetry_collector",
            "gc",
            "cert_renewer",
        ],
    )


@contextlib.asynccontextmanager
async def control_plane(cfg: Config, keep: list[ControlPlane]) -> AsyncIterator[ControlPlane]:
    """A started control plane, kept in ``keep`` after it stops: its provider holds
    the processes it started, which outlive it and are killed (and reaped) last."""
    cp = ControlPlane(cfg, load_plugins=False)
    keep.append(cp)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def _kill(*handles: str | None) -> None:
    """Kill the processes and wait until they are gone."""
    for handle in handles:
        with contextlib.suppress(ProcessLookupError, PermissionError, AssertionError):
            os.killpg(pid(handle), signal.SIGKILL)
    await wait_for(lambda: not any(h is not None and alive(h) for h in handles), within=10)


async def test_a_dead_nodes_instances_run_on_a_live_node_within_the_timeout_and_a_tick(
    config: Config,
    nats_server: ServerInfo,
    subjects: Subjects,
    tmp_path: Path,
    store_location: Path | str,
) -> None:
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.>"))
    handles: list[str | None] = []
    keep: list[ControlPlane] = []
    try:
        async with control_plane(node_config(config, tmp_path, "b", store_location), keep) as b:
            cfg_a = node_config(config, tmp_path, "a", store_location)
            cp_a = ControlPlane(cfg_a, load_plugins=False)
            keep.append(cp_a)
            await cp_a.start()
            try:
                assert cp_a.inventory is not None
                await wait_for(lambda: b.nodes.live() == ["a", "b"])
                result = await cp_a.inventory.apply(
                    [decl("lost", node="a"), decl("cut-off", node="a")]
                )
                assert result.errors == []
                lost = await b.store.instances.get("lost")
                cut_off = await b.store.instances.get("cut-off")
                handles += [lost.handle, cut_off.handle]
            finally:
                # a dies: its heartbeats stop, and with its host goes the
                # process of "lost"; that of "cut-off" lives on, as behind a
                # network partition.
                await cp_a.stop()
                await _kill(lost.handle)
            loop = asyncio.get_running_loop()
            died = loop.time()

            async def moved() -> bool:
                instances = await b.store.instances.all()
                return all(
                    i.node == "b" and i.state is InstanceState.RUNNING and alive(i.handle)
                    for i in instances
                )

            await wait_for(moved, within=NODE_TIMEOUT.total_seconds() + 20, interval=0.05)
            took = loop.time() - died
            handles += [i.handle for i in await b.store.instances.all()]
            # Dead once silent for node_timeout; then taken on b's next tick.
            assert NODE_TIMEOUT.total_seconds() * 0.8 <= took
            assert took <= (NODE_TIMEOUT + RECONCILE).total_seconds() + 2.0, took
            print(f"failover took {took:.2f}s (node_timeout 3s, reconcile_interval 1s)")

            await wait_for(lambda: len(of_type(seen, "instance.rescheduled")) == 2)
            rescheduled = of_type(seen, "instance.rescheduled")
            assert sorted((e.data["name"], e.data["from"], e.data["to"]) for e in rescheduled) == [
                ("cut-off", "a", "b"),
                ("lost", "a", "b"),
            ]

            # a comes back: it stops its own copy of what moved away.
            assert alive(cut_off.handle)
            async with control_plane(node_config(config, tmp_path, "a", store_location), keep):
                await wait_for(lambda: not alive(cut_off.handle), within=20)
            for i in await b.store.instances.all():
                assert (i.node, i.state) == ("b", InstanceState.RUNNING) and alive(i.handle)
            assert len(of_type(seen, "instance.rescheduled")) == 2
    finally:
        await _kill(*handles)
        reap_instances(keep)
        await nc.close()


async def test_a_node_restarted_within_the_timeout_keeps_its_instances(
    config: Config,
    nats_server: ServerInfo,
    subjects: Subjects,
    tmp_path: Path,
    store_location: Path | str,
) -> None:
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.>"))
    web: Instance | None = None
    keep: list[ControlPlane] = []
    try:
        async with control_plane(node_config(config, tmp_path, "b", store_location), keep) as b:
            async with control_plane(node_config(config, tmp_path, "a", store_location), keep) as a:
                assert a.inventory is not None
                await a.inventory.apply([decl("web", node="a")])
                web = await b.store.instances.get("web")
            # a restarts: its node stays live until node_timeout, so nothing moves.
            async with control_plane(node_config(config, tmp_path, "a", store_location), keep) as a:
                runs = _runs(b, "reconciler") + _runs(a, "reconciler")
                await wait_for(
                    lambda: _runs(b, "reconciler") + _runs(a, "reconciler") >= runs + 3,
                    within=20,
                )
                again = await b.store.instances.get("web")
                assert (again.node, again.state, again.handle) == (
                    "a",
                    InstanceState.RUNNING,
                    web.handle,
                )
                assert alive(web.handle)
        assert of_type(seen, "instance.rescheduled") == []
        assert len(of_type(seen, "instance.started")) == 1
    finally:
        await _kill(None if web is None else web.handle)
        reap_instances(keep)
        await nc.close()


def _runs(cp: ControlPlane, worker: str) -> int:
    return next(w.run_count for w in cp.scheduler.workers() if w.name == worker)
