"""ControlPlane: wiring, custom workers from config and entry points, start and stop."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import socket
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from ctrlplane import Config, ControlPlane, WorkerLoadError
from ctrlplane.actors import RunContext, WorkerKind
from ctrlplane.actors.errors import TooManyConsumersError
from ctrlplane.bus import Event
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.server import ServerInfo
from ctrlplane.errors import ConfigError, DataDirInUseError
from ctrlplane.store import Dialect, Outcome, Store
from tests.helpers import make_instance, reap_instances, wait_for

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class SeesContext:
    name = "sees-context"
    interval = timedelta(0)
    subscriptions = ("ping",)

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run(self, ctx: RunContext) -> None:
        self.seen.append(request_id.get())
        await ctx.emit("pong", {"for": ctx.event.id if ctx.event else None})


async def test_control_plane_runs_registered_workers(config: Config) -> None:
    worker = SeesContext()
    cp = ControlPlane(config, load_plugins=False)
    cp.register(worker)
    # The context of start() is the parent of every run.
    token = request_id.set("from-start")
    try:
        await cp.start()
    finally:
        request_id.reset(token)
    try:
        await cp.bus.publish_event(Event(type="ping", source="test", id="p-1"))
        await wait_for(lambda: worker.seen == ["from-start"])

        async def recorded() -> bool:
            return bool(await cp.store.runs.list(worker="sees-context"))

        await wait_for(recorded)
        runs = await cp.store.runs.list(worker="sees-context")
        assert [(r.trigger.value, r.outcome, r.trigger_ref) for r in runs] == [
            ("event", Outcome.OK, "p-1")
        ]
        info = await cp.bus.js.get_last_msg(
            cp.bus.subjects.events_stream, cp.bus.subjects.event("pong")
        )
        assert info.data is not None
        pong = msgspec.json.decode(info.data, type=Event)
        assert pong.source == "sees-context" and pong.data == {"for": "p-1"}
    finally:
        await cp.stop()
    assert not cp.scheduler.running
    assert not cp.bus.connected


async def test_control_plane_loads_workers_named_in_config(config: Config) -> None:
    cfg = msgspec.structs.replace(config, workers=["tests.sample_workers:SlotLog"])
    async with ControlPlane(cfg, load_plugins=False) as cp:
        (info,) = [w for w in cp.scheduler.workers() if w.name == "slot-log"]
        assert info.kind is WorkerKind.PERIODIC


async def test_built_in_workers_are_registered_and_can_be_turned_off(config: Config) -> None:
    async with ControlPlane(config, load_plugins=False) as cp:
        workers = {w.name: w for w in cp.scheduler.workers()}
    assert workers["reconciler"].interval == timedelta(seconds=60)
    assert workers["health_runner"].interval == timedelta(seconds=30)
    assert workers["gc"].interval == timedelta(minutes=5)
    assert workers["reconciler"].subscriptions == ("instance.*",)
    assert workers["remediator"].kind is WorkerKind.EVENT
    assert workers["audit_recorder"].subscriptions == (">",)
    cfg = msgspec.structs.replace(config, disabled_workers=["remediator", "audit_recorder"])
    async with ControlPlane(cfg, load_plugins=False) as cp:
        names = {w.name for w in cp.scheduler.workers()}
    assert names == {"reconciler", "health_runner", "telemetry_collector", "gc", "cert_renewer"}


@pytest.fixture
def plugin_dist(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution that declares a worker entry point (a real
    dist-info on sys.path, as pip would leave it)."""
    site = tmp_path / "site"
    pkg = site / "acme_workers"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from datetime import timedelta

            class Nightly:
                name = "acme-nightly"
                interval = timedelta(hours=24)

                async def run(self, ctx):
                    return None
            """
        ),
        encoding="utf-8",
    )
    dist = site / "acme_workers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-workers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ctrlplane.workers]\nnightly = acme_workers:Nightly\n")
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("acme_workers", None)


async def test_control_plane_loads_entry_point_workers(config: Config, plugin_dist: Path) -> None:
    async with ControlPlane(config) as cp:
        names = [w.name for w in cp.scheduler.workers()]
    assert "acme-nightly" in names


async def test_broken_entry_point_is_named(config: Config, plugin_dist: Path) -> None:
    (plugin_dist / "acme_workers-1.0.dist-info" / "entry_points.txt").write_text(
        "[ctrlplane.workers]\nnightly = acme_workers:Gone\n"
    )
    cp = ControlPlane(config)
    with pytest.raises(WorkerLoadError, match="entry point 'nightly'"):
        await cp.start()
    assert not cp.bus.connected


async def test_failed_start_leaves_nothing_running(config: Config) -> None:
    cfg = msgspec.structs.replace(config, workers=["tests.sample_workers:BadName"])
    cp = ControlPlane(cfg, load_plugins=False)
    with pytest.raises(ValueError, match="invalid name"):
        await cp.start()
    assert not cp.bus.connected
    assert not cp.scheduler.running


async def test_embedded_default_starts_and_stops_its_server(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data", stop_grace=timedelta(seconds=1))
    async with ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.server is not None
        assert cp.server.info.url.startswith("nats://127.0.0.1:")
        assert cp.bus.connected
        assert (tmp_path / "data" / "ctrlplane.db").exists()
    assert cp.server is None


async def test_stop_finishes_when_its_nats_server_is_already_gone(tmp_path: Path) -> None:
    # SIGTERM often comes when the broker is what failed: stop must still
    # stop everything, raise nothing, and free the data dir.
    cfg = Config(data_dir=tmp_path / "data", stop_grace=timedelta(seconds=1))
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    assert cp.server is not None
    await cp.server.stop()
    await wait_for(lambda: cp.bus.nc.is_reconnecting, within=30)
    await cp.stop()
    assert not cp.bus.connected
    again = ControlPlane(cfg, load_plugins=False)
    await again.start()
    await again.stop()


async def test_a_control_plane_on_a_postgresql_store(config: Config, postgres_url: str) -> None:
    cfg = msgspec.structs.replace(config, store_url=postgres_url)
    async with Store(postgres_url) as shared, ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.store.path is None
        assert cp.store.db.dialect is Dialect.POSTGRESQL
        assert cp.store.identity == shared.identity
        assert "s3cret" not in cp.store.location
        await cp.store.instances.create(make_instance("web"))
        # What one replica writes, another reads: one database, no file.
        assert [i.name for i in await shared.instances.all()] == ["web"]
    # The reconciler may have started "web" before the stop.
    reap_instances([cp])
    assert not (config.data_dir / "ctrlplane.db").exists()


async def test_one_control_plane_per_data_dir(config: Config) -> None:
    async with ControlPlane(config, load_plugins=False):
        holder = json.loads((config.data_dir / "ctrlplane.lock").read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
        second = ControlPlane(config, load_plugins=False)
        with pytest.raises(DataDirInUseError) as info:
            await second.start()
        assert info.value.holder == f"pid {os.getpid()} on {socket.gethostname()}"
        assert str(config.data_dir) in str(info.value)
        assert not second.bus.connected
    # Released on stop: the data dir can be used again.
    async with ControlPlane(config, load_plugins=False):
        pass


async def test_misspelt_disabled_worker_is_refused_before_connecting(config: Config) -> None:
    cfg = msgspec.structs.replace(config, disabled_workers=["remediatorr"])
    cp = ControlPlane(cfg, load_plugins=False)
    with pytest.raises(ConfigError, match='did you mean "remediator"'):
        await cp.start()
    assert not cp.bus.connected
    # A registered worker's name counts as known.
    cfg = msgspec.structs.replace(config, disabled_workers=["sees-context"])
    cp = ControlPlane(cfg, load_plugins=False)
    cp.register(SeesContext())
    async with cp:
        pass


async def test_start_gives_up_on_unreachable_nats(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = Config(
        nats_url=f"nats://127.0.0.1:{port}",
        data_dir=tmp_path / "data",
        connect_timeout=timedelta(seconds=1),
    )
    cp = ControlPlane(cfg, load_plugins=False)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BusError) as info:
        await cp.start()
    assert loop.time() - began < 3
    assert str(info.value).startswith(f"cannot connect to NATS at nats://127.0.0.1:{port}: ")
    assert "gave up after 1s" in str(info.value)
    # Nothing is left behind: the lock is free again.
    again = ControlPlane(cfg, load_plugins=False)
    again._lock.acquire()
    again._lock.release()


async def test_start_refused_credentials_fail_at_once(
    config: Config, nats_server: ServerInfo
) -> None:
    cfg = msgspec.structs.replace(config, nats_url=nats_server.url.replace("://", "://wrong@"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BusError, match=re.escape("at nats://***@127.0.0.1:")):
        await ControlPlane(cfg, load_plugins=False).start()
    assert loop.time() - began < 2


async def test_cancelled_while_connecting_leaves_nothing(tmp_path: Path) -> None:
    cfg = Config(
        nats_url="nats://127.0.0.1:1",
        data_dir=tmp_path / "data",
        connect_timeout=timedelta(seconds=60),
    )
    cp = ControlPlane(cfg, load_plugins=False)
    before = asyncio.all_tasks()
    starting = asyncio.create_task(cp.start())
    await wait_for(lambda: (cfg.data_dir / "ctrlplane.lock").exists())
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await starting
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    # The lock went with it.
    second = ControlPlane(cfg, load_plugins=False)
    second._lock.acquire()
    second._lock.release()


async def test_a_consumer_limit_too_small_for_the_workers_stops_the_start(config: Config) -> None:
    small = msgspec.structs.replace(config, max_consumers=3, stream_replicas=1)
    cp = ControlPlane(small, load_plugins=False)
    assert (cp.bus.limits.max_consumers, cp.bus.limits.stream_replicas) == (3, 1)
    # The built-in periodic workers alone need five tick consumers.
    with pytest.raises(TooManyConsumersError, match=r"max_consumers \(3\)"):
        await cp.start()
    assert not cp.bus.connected


def test_stream_replicas_reach_the_bus(config: Config) -> None:
    cp = ControlPlane(msgspec.structs.replace(config, stream_replicas=3), load_plugins=False)
    assert cp.bus.limits.stream_replicas == 3
    assert cp.bus.limits.max_consumers == config.max_consumers == 10_000
