"""Reconciler and remediator end to end: real processes, real NATS, real SQLite."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import structlog

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.actors.runs import Trigger
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.declarations import InstanceDecl
from ctrlplane.providers import ProcessProvider
from ctrlplane.store import Store
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Observation
from ctrlplane.workers.reconciler import ReconcileError, Reconciler
from tests.helpers import make_instance, subscribe_events, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web(name: str, port: int) -> InstanceDecl:
    return msgspec.convert(
        {
            "name": name,
            "command": [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            "checks": [{"name": "http", "type": "http", "target": f"http://127.0.0.1:{port}/"}],
        },
        InstanceDecl,
    )


def _runs(cp: ControlPlane, worker: str) -> int:
    return next(w.run_count for w in cp.scheduler.workers() if w.name == worker)


async def _stop_instances(cp: ControlPlane) -> None:
    assert cp.inventory is not None
    for instance in await cp.store.instances.all():
        if instance.state is InstanceState.RUNNING:
            await cp.inventory.stop(instance)


async def test_killed_instance_is_drift_and_the_remediator_brings_it_back(
    config: Config, nats_server: ServerInfo, subjects: Subjects
) -> None:
    cfg = msgspec.structs.replace(
        config, instances=[web("web", free_port())], reconcile_interval=timedelta(seconds=1)
    )
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.*"))
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    try:
        before = await cp.store.instances.get("web")
        assert before.state is InstanceState.RUNNING and before.handle
        os.kill(int(before.handle.split(":")[0]), signal.SIGKILL)
        killed_at = asyncio.get_running_loop().time()

        await wait_for(lambda: any(e.type == "instance.drift" for e in seen), within=10)
        # Within one reconcile trigger (1 s), give or take a slot's start.
        assert asyncio.get_running_loop().time() - killed_at < 2.5
        drift = next(e for e in seen if e.type == "instance.drift")
        assert drift.instance_id == before.id
        assert drift.data["name"] == "web"
        assert drift.data["recorded"] == "running"
        assert drift.data["actual"] == "failed"
        assert "SIGKILL" in drift.data["detail"]
        assert datetime.fromisoformat(drift.data["detected_at"]) <= datetime.now(UTC)

        await wait_for(lambda: any(e.type == "instance.restarted" for e in seen), within=10)
        after = await cp.store.instances.get("web")
        assert after.state is InstanceState.RUNNING
        assert after.handle != before.handle
        provider = ProcessProvider(cfg.data_dir)
        assert (await provider.status([after]))[after.id].state is InstanceState.RUNNING
        assert len(await cp.store.instances.restarts_since(after.id, before.created)) == 1
        audit = await cp.store.audit.recent(instance_id=after.id)
        assert {"instance.created", "instance.drift", "instance.restarted"} <= {
            a.type for a in audit
        }
    finally:
        await _stop_instances(cp)
        await cp.stop()
        await nc.close()


async def test_a_crash_loop_backs_off_and_gives_up(
    config: Config, nats_server: ServerInfo, subjects: Subjects
) -> None:
    crasher = msgspec.convert(
        {"name": "crasher", "command": [sys.executable, "-c", "import sys; sys.exit(3)"]},
        InstanceDecl,
    )
    cfg = msgspec.convert(
        {
            **msgspec.structs.asdict(config),
            "instances": [crasher],
            "reconcile_interval": timedelta(milliseconds=300),
            "remediation": {"backoff": timedelta(milliseconds=200), "max_restarts": 3},
        },
        Config,
    )
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.>"))
    async with ControlPlane(cfg, load_plugins=False) as cp:
        await wait_for(lambda: any(e.type == "instance.failed" for e in seen), within=20)
        restarts = [e for e in seen if e.type == "instance.restarted"]
        assert [e.data["attempt"] for e in restarts] == [1, 2, 3]
        # Back-off: each restart waited longer than the one before. Measured
        # on the recorded restarts (taken when a restart is decided), not on
        # the events' times, which also hold how long each start took.
        crashed = await cp.store.instances.get("crasher")
        times = await cp.store.instances.restarts_since(crashed.id, crashed.created)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert len(gaps) == 2 and gaps[0] >= 0.2 - 1e-3 and gaps[1] >= 0.4 - 1e-3, gaps
        gave_up = next(e for e in seen if e.type == "instance.failed")
        assert "gave up" in gave_up.data["reason"]
        assert crashed.state is InstanceState.FAILED
        # And it stays given up while several reconcile ticks go by: no more restarts.
        runs = _runs(cp, "reconciler")
        await wait_for(lambda: _runs(cp, "reconciler") >= runs + 3, within=20)
        assert len([e for e in seen if e.type == "instance.restarted"]) == 3
        assert (await cp.store.instances.get("crasher")).state is InstanceState.FAILED
    await nc.close()


class BrokenProvider:
    """A provider whose status call fails, as a remote API that is down would."""

    name = "broken"

    async def start(self, instance: Instance) -> str:
        return "x"

    async def stop(self, instance: Instance, grace: timedelta) -> None:
        return None

    async def status(self, instances: Sequence[Instance]) -> dict[str, Observation]:
        raise ConnectionError("provider API unreachable")

    async def pids(self, instance: Instance) -> list[int]:
        return []


async def test_one_failing_provider_does_not_stop_the_others(
    store: Store, bus: Bus, tmp_path: Path
) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    process = ProcessProvider(tmp_path)
    await store.instances.put(make_instance("gone", id="i-gone"))
    await store.instances.put(make_instance("remote", id="i-remote", provider="broken", handle="x"))
    reconciler = Reconciler(store, {"process": process, "broken": BrokenProvider()})
    published: list[Event] = []

    async def publish(event: Event) -> int:
        published.append(event)
        return await bus.publish_event(event)

    ctx = RunContext(
        worker="reconciler",
        run_id="r1",
        trigger=Trigger.TICK,
        attempt=1,
        publish=publish,
        log=structlog.get_logger(),
    )
    with pytest.raises(ReconcileError, match="broken: ConnectionError: provider API unreachable"):
        await reconciler.run(ctx)
    assert [(e.type, e.data["name"], e.data["actual"]) for e in published] == [
        ("instance.drift", "gone", "stopped")
    ]
    assert (await store.instances.get("gone")).state is InstanceState.STOPPED
    assert (await store.instances.get("remote")).state is InstanceState.RUNNING
