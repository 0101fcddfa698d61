"""apply: create, update, start, stop and remove real processes, idempotently."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from ctrlplane.bus import Bus, Event
from ctrlplane.declarations import InstanceDecl
from ctrlplane.inventory import Inventory, InventoryError
from ctrlplane.providers import ProcessProvider
from ctrlplane.store import Store
from ctrlplane.store.health import CheckSpec
from ctrlplane.store.instances import DesiredState, InstanceState
from tests.helpers import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest_asyncio.fixture
async def inventory(store: Store, bus: Bus, tmp_path: Path) -> AsyncIterator[Inventory]:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    inv = Inventory(store, {"process": ProcessProvider(tmp_path / "data")}, bus.publish_event)
    try:
        yield inv
    finally:
        # No process may outlive the test.
        for instance in await store.instances.all():
            if instance.state is InstanceState.RUNNING:
                await inv.stop(instance)


@pytest_asyncio.fixture
async def events(bus: Bus) -> AsyncIterator[list[Event]]:
    seen: list[Event] = []

    async def collect(msg: Msg) -> None:
        seen.append(msgspec.json.decode(msg.data, type=Event))

    sub = await bus.nc.subscribe(bus.subjects.all_events, cb=collect)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


def _decl(name: str, **kw: object) -> InstanceDecl:
    return msgspec.convert({"name": name, "command": SLEEPER, **kw}, InstanceDecl)


async def _running(inv: Inventory, store: Store) -> dict[str, str]:
    instances = await store.instances.all()
    seen = await inv.providers["process"].status(instances)
    return {i.name: seen[i.id].state.value for i in instances}


async def test_apply_creates_and_starts_then_changes_nothing(
    inventory: Inventory, store: Store, events: list[Event]
) -> None:
    decls = [
        _decl("a"),
        _decl("b", checks=[{"name": "up", "type": "tcp", "target": "127.0.0.1:1"}]),
    ]
    first = await inventory.apply(decls)
    assert (sorted(first.created), first.errors) == (["a", "b"], [])
    assert await _running(inventory, store) == {"a": "running", "b": "running"}
    handles = {i.name: i.handle for i in await store.instances.all()}
    checks = await store.health.states((await store.instances.get("b")).id)
    assert [(c.name, c.spec.type, c.status.value) for c in checks] == [("up", "tcp", "unknown")]

    second = await inventory.apply(decls)
    assert (sorted(second.unchanged), second.created, second.updated) == (["a", "b"], [], [])
    assert {i.name: i.handle for i in await store.instances.all()} == handles
    await wait_for(lambda: len([e for e in events if e.type == "deploy.succeeded"]) == 2)
    types = sorted(e.type for e in events)
    assert types == (
        ["deploy.started"] * 2
        + ["deploy.succeeded"] * 2
        + ["instance.created"] * 2
        + ["instance.started"] * 2
    )


async def test_apply_removes_what_the_file_no_longer_lists(
    inventory: Inventory, store: Store, events: list[Event]
) -> None:
    await inventory.apply([_decl("a"), _decl("b")])
    gone = await store.instances.get("b")
    result = await inventory.apply([_decl("a")])
    assert result.removed == ["b"]
    assert [i.name for i in await store.instances.all()] == ["a"]
    assert (await inventory.providers["process"].status([gone]))[
        gone.id
    ].state is not InstanceState.RUNNING
    await wait_for(lambda: any(e.type == "instance.destroyed" for e in events))


async def test_desired_state_and_spec_changes_are_applied(
    inventory: Inventory, store: Store
) -> None:
    await inventory.apply([_decl("a")])
    result = await inventory.apply([_decl("a", desired_state="stopped")])
    assert result.updated == ["a"]
    a = await store.instances.get("a")
    assert (a.state, a.desired) == (InstanceState.STOPPED, DesiredState.STOPPED)
    assert await _running(inventory, store) == {"a": "stopped"}
    result = await inventory.apply([_decl("a", env={"X": "1"})])
    a = await store.instances.get("a")
    assert (result.updated, a.state, a.spec.env) == (["a"], InstanceState.RUNNING, {"X": "1"})


async def test_a_bad_command_fails_that_instance_only(inventory: Inventory, store: Store) -> None:
    result = await inventory.apply([_decl("ok"), _decl("bad", command=["/nonexistent/program"])])
    assert result.created == ["ok", "bad"]
    assert len(result.errors) == 1 and "bad" in result.errors[0]
    bad = await store.instances.get("bad")
    assert bad.state is InstanceState.FAILED
    assert bad.state_error is not None and "/nonexistent/program" in bad.state_error
    assert (await store.instances.get("ok")).state is InstanceState.RUNNING


async def test_invalid_declarations_are_refused_whole(inventory: Inventory, store: Store) -> None:
    with pytest.raises(InventoryError, match=r"instances\[1\]\.name"):
        await inventory.apply([_decl("a"), _decl("a")])
    with pytest.raises(InventoryError, match="unknown provider 'docker'"):
        await inventory.apply([_decl("a", provider="docker")])
    assert await store.instances.all() == []


async def test_checks_follow_the_declaration(inventory: Inventory, store: Store) -> None:
    up = {"name": "up", "type": "tcp", "target": "127.0.0.1:1"}
    await inventory.apply([_decl("a", checks=[up, {**up, "name": "other"}])])
    await inventory.apply([_decl("a", checks=[{**up, "timeout": timedelta(seconds=5)}])])
    states = await store.health.states((await store.instances.get("a")).id)
    assert [(s.name, s.spec) for s in states] == [
        ("up", CheckSpec(name="up", type="tcp", target="127.0.0.1:1", timeout=timedelta(seconds=5)))
    ]


async def test_apply_after_a_spec_change_changes_nothing_the_second_time(
    inventory: Inventory, store: Store, events: list[Event]
) -> None:
    up = {"name": "up", "type": "tcp", "target": "127.0.0.1:1"}
    await inventory.apply([_decl("a", checks=[up])])
    changed = [_decl("a", env={"X": "1"}, checks=[up])]
    first = await inventory.apply(changed)
    assert (first.updated, first.errors) == (["a"], [])
    a = await store.instances.get("a")
    # The new spec is recorded in place: the instance keeps its checks.
    assert [s.name for s in await store.health.states(a.id)] == ["up"]
    handle = a.handle

    second = await inventory.apply(changed)
    assert (second.unchanged, second.updated, second.errors) == (["a"], [], [])
    third = await inventory.apply(changed)
    assert (third.unchanged, third.updated, third.errors) == (["a"], [], [])
    assert (await store.instances.get("a")).handle == handle
    await wait_for(lambda: any(e.type == "deploy.succeeded" for e in events[-3:]))
    updates = [e for e in events if e.type == "instance.updated"]
    assert [e.data["spec_changed"] for e in updates] == [True]
