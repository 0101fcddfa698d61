"""Deployments: real spec changes rolled through the process provider, and rolled back."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from ctrlplane.api import ApiService, DomainApi
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.declarations import InstanceDecl
from ctrlplane.inventory import Inventory
from ctrlplane.providers import ProcessProvider
from ctrlplane.store import Store
from ctrlplane.store.deployments import Deployment, DeploymentState
from ctrlplane.store.instances import Instance, InstanceState
from tests.helpers import wait_for
from tests.processes import env_for, run_cli

# Prints its VERSION, then sleeps; a TERM is answered at once unless SLOW_STOP is set.
SERVER = [
    sys.executable,
    "-c",
    "import os, signal, time\n"
    "if os.environ.get('SLOW_STOP'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('VERSION=' + os.environ.get('VERSION', '?'), flush=True)\n"
    "time.sleep(120)\n",
]
S = DeploymentState


@pytest_asyncio.fixture
async def inventory(store: Store, bus: Bus, tmp_path: Path) -> AsyncIterator[Inventory]:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    inv = Inventory(
        store,
        {"process": ProcessProvider(tmp_path / "data")},
        bus.publish_event,
        stop_grace=timedelta(seconds=1),
    )
    try:
        yield inv
    finally:
        # No process may outlive the test.
        provider = inv.providers["process"]
        for instance in await store.instances.all():
            await provider.stop(instance, timedelta(0))


@pytest_asyncio.fixture
async def events(bus: Bus) -> AsyncIterator[list[Event]]:
    seen: list[Event] = []

    async def collect(msg: Msg) -> None:
        seen.append(msgspec.json.decode(msg.data, type=Event))

    sub = await bus.nc.subscribe(bus.subjects.event("deploy.*"), cb=collect)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


def _decl(version: str, **kw: object) -> InstanceDecl:
    env = {"VERSION": version, **kw.pop("env", {})}  # type: ignore[dict-item]
    return msgspec.convert({"name": "web", "command": SERVER, "env": env, **kw}, InstanceDecl)


def _environ(instance: Instance) -> dict[str, str]:
    """The environment of the instance's process (empty for a moment after exec)."""
    assert instance.handle is not None
    pid = instance.handle.split(":")[0]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def _version(instance: Instance) -> str | None:
    """The VERSION the instance's process runs with, once the kernel shows its environment."""
    await wait_for(lambda: bool(_environ(instance)))
    return _environ(instance).get("VERSION")


async def _running(inv: Inventory, instance: Instance) -> bool:
    seen = await inv.providers["process"].status([instance])
    return seen[instance.id].state is InstanceState.RUNNING


def _log(tmp_path: Path) -> str:
    path = tmp_path / "data" / "instances" / "web" / "output.log"
    return path.read_text() if path.exists() else ""


async def test_a_changed_spec_is_rolled_out_and_recorded(
    inventory: Inventory, store: Store, events: list[Event], tmp_path: Path
) -> None:
    await inventory.apply([_decl("1")])
    v1 = await store.instances.get("web")
    assert await _running(inventory, v1)
    await wait_for(lambda: "VERSION=1" in _log(tmp_path))

    result = await inventory.apply([_decl("2")])
    assert (result.updated, result.errors) == (["web"], [])
    v2 = await store.instances.get("web")
    assert v2.state is InstanceState.RUNNING and v2.spec_hash != v1.spec_hash
    assert v2.handle != v1.handle
    assert await _running(inventory, v2) and not await _running(inventory, v1)
    assert await _version(v2) == "2"
    await wait_for(lambda: "VERSION=2" in _log(tmp_path))
    assert _log(tmp_path).splitlines() == ["VERSION=1", "VERSION=2"]

    second, first = await store.deployments.list()
    assert (first.spec_hash, first.previous_hash, first.state) == (v1.spec_hash, None, S.SUCCEEDED)
    assert (second.spec_hash, second.previous_hash, second.state, second.error) == (
        v2.spec_hash,
        v1.spec_hash,
        S.SUCCEEDED,
        None,
    )
    assert second.finished is not None and second.started <= second.finished
    assert second.instance_id == v2.id and second.instance_name == "web"

    await wait_for(lambda: len(events) == 4)
    assert [(e.type, e.data["deployment"], e.data["state"]) for e in events] == [
        ("deploy.started", first.id, "running"),
        ("deploy.succeeded", first.id, "succeeded"),
        ("deploy.started", second.id, "running"),
        ("deploy.succeeded", second.id, "succeeded"),
    ]
    assert all(e.instance_id == v2.id for e in events)
    assert events[2].data["previous_hash"] == v1.spec_hash

    # Applying the same file again deploys nothing.
    again = await inventory.apply([_decl("2")])
    assert again.unchanged == ["web"] and len(await store.deployments.list()) == 2


async def test_a_spec_that_does_not_start_is_rolled_back(
    inventory: Inventory, store: Store, events: list[Event]
) -> None:
    await inventory.apply([_decl("1")])
    v1 = await store.instances.get("web")

    result = await inventory.apply([_decl("2", command=["/nonexistent/program"])])
    assert len(result.errors) == 1
    assert "/nonexistent/program" in result.errors[0] and "rolled back" in result.errors[0]

    back = await store.instances.get("web")
    assert (back.state, back.spec_hash, back.spec.env) == (
        InstanceState.RUNNING,
        v1.spec_hash,
        {"VERSION": "1"},
    )
    assert back.handle != v1.handle  # restarted on the previous spec
    assert await _running(inventory, back) and await _version(back) == "1"

    deployment = (await store.deployments.list())[0]
    assert deployment.state is S.ROLLED_BACK and deployment.previous_hash == v1.spec_hash
    assert deployment.error is not None and "/nonexistent/program" in deployment.error
    await wait_for(lambda: any(e.type == "deploy.failed" for e in events))
    failed = next(e for e in events if e.type == "deploy.failed")
    assert failed.data["rolled_back"] is True and failed.data["deployment"] == deployment.id
    assert "/nonexistent/program" in failed.data["error"]


async def test_when_the_previous_spec_fails_too_the_deployment_fails(
    inventory: Inventory, store: Store, events: list[Event], tmp_path: Path
) -> None:
    workdir = tmp_path / "v1"
    workdir.mkdir()
    await inventory.apply([_decl("1", cwd=str(workdir))])
    shutil.rmtree(workdir)  # the previous spec can no longer start

    result = await inventory.apply([_decl("2", command=["/nonexistent/program"])])
    assert len(result.errors) == 1 and "rolled back" not in result.errors[0]
    deployment = (await store.deployments.list())[0]
    assert deployment.state is S.FAILED and deployment.error is not None
    assert "/nonexistent/program" in deployment.error and str(workdir) in deployment.error
    assert (await store.instances.get("web")).state is InstanceState.FAILED
    await wait_for(lambda: any(e.type == "deploy.failed" for e in events))
    failed = next(e for e in events if e.type == "deploy.failed")
    assert failed.data["rolled_back"] is False


async def test_a_second_apply_during_a_deployment_is_refused(
    inventory: Inventory, store: Store, events: list[Event]
) -> None:
    # v1 ignores SIGTERM, so stopping it takes the whole 1 s grace.
    await inventory.apply([_decl("1", env={"SLOW_STOP": "1"})])
    rolling = asyncio.create_task(inventory.apply([_decl("2")]))
    await wait_for(lambda: len(events) == 3)  # v1's started and succeeded, then v2's started
    assert events[2].type == "deploy.started"
    in_progress = (await store.deployments.list())[0]
    assert in_progress.state is S.RUNNING

    refused = await inventory.apply([_decl("3")])
    assert len(refused.errors) == 1 and in_progress.id in refused.errors[0]
    assert "in progress" in refused.errors[0]

    assert (await rolling).errors == []
    web = await store.instances.get("web")
    assert web.spec.env == {"VERSION": "2"} and await _version(web) == "2"
    assert [d.state for d in await store.deployments.list()] == [S.SUCCEEDED, S.SUCCEEDED]
    # Once it has finished, the next apply goes through.
    assert (await inventory.apply([_decl("3")])).errors == []
    assert await _version(await store.instances.get("web")) == "3"


async def test_a_deployment_abandoned_by_a_dead_process_is_cancelled(
    inventory: Inventory, store: Store
) -> None:
    await inventory.apply([_decl("1")])
    web = await store.instances.get("web")
    stale = Deployment(
        id="d-stale",
        instance_id=web.id,
        instance_name="web",
        spec_hash="0" * 16,
        previous_hash=web.spec_hash,
        state=S.RUNNING,
        started=datetime.now(UTC) - timedelta(hours=1),
    )
    await store.deployments.create(stale)
    assert (await inventory.apply([_decl("2")])).errors == []
    cancelled = await store.deployments.get("d-stale")
    assert cancelled.state is S.CANCELLED and cancelled.finished is not None
    assert (await store.deployments.list())[0].state is S.SUCCEEDED


async def test_only_specs_going_live_are_deployments(inventory: Inventory, store: Store) -> None:
    await inventory.apply([_decl("1", desired_state="stopped")])
    assert await store.deployments.list() == []  # nothing started
    await inventory.apply([_decl("2", desired_state="stopped")])
    assert await store.deployments.list() == []
    await inventory.apply([_decl("2")])  # started now, on a spec never deployed
    (first,) = await store.deployments.list()
    assert (first.state, first.previous_hash) == (S.SUCCEEDED, None)
    await inventory.apply([_decl("2", desired_state="stopped")])
    await inventory.apply([_decl("2")])  # the same spec again: a start, not a deployment
    assert len(await store.deployments.list()) == 1
    assert (await store.instances.get("web")).state is InstanceState.RUNNING


@pytest.mark.usefixtures("events")
async def test_ctrlplane_deployments_lists_them(
    inventory: Inventory, store: Store, bus: Bus, nats_server: ServerInfo
) -> None:
    await inventory.apply([_decl("1")])
    await inventory.apply([_decl("2", command=["/nonexistent/program"])])
    api = ApiService(bus, DomainApi(bus, store, inventory).handlers())
    await api.start()
    try:
        env = env_for(CTRLPLANE_SUBJECT_PREFIX=bus.subjects.prefix)
        args = ["deployments", "--nats-url", nats_server.client_url]
        out = await asyncio.to_thread(run_cli, [*args, "--json"], env)
        assert out.returncode == 0, out.stderr
        listed = json.loads(out.stdout)
        assert [(d["instance_name"], d["state"]) for d in listed] == [
            ("web", "rolled_back"),
            ("web", "succeeded"),
        ]
        table = await asyncio.to_thread(run_cli, [*args, "--instance", "web"], env)
        assert table.returncode == 0, table.stderr
        assert "rolled_back" in table.stdout and listed[0]["id"] in table.stdout
        # The error in full, however long, as the last column.
        error = listed[0]["error"]
        assert len(error) > 60 and table.stdout.splitlines()[1].endswith(error)
        # An instance that does not exist is an error, as for telemetry; one
        # that exists is listed (by name or id).
        nosuch = await asyncio.to_thread(run_cli, [*args, "--instance", "nosuch"], env)
        assert nosuch.returncode == 1 and "no instance 'nosuch'" in nosuch.stderr
        web_id = listed[0]["instance_id"]
        by_id = await asyncio.to_thread(run_cli, [*args, "--instance", web_id, "--json"], env)
        assert by_id.returncode == 0 and len(json.loads(by_id.stdout)) == 2
    finally:
        await api.stop()
