"""Telemetry: the process and Prometheus collectors against real processes and a real
endpoint, the TelemetryCollector's isolation of failures and its one write per run,
and ``ctrlplane telemetry`` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import EntryPoint
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
import structlog
from aiohttp import web
from structlog.testing import capture_logs

import ctrlplane.plugins
from ctrlplane import ControlPlane
from ctrlplane.actors.context import RunContext
from ctrlplane.actors.runs import Trigger
from ctrlplane.bus.messages import Event
from ctrlplane.bus.server import read_server_info
from ctrlplane.config import Config
from ctrlplane.providers import ProcessProvider
from ctrlplane.store import Store
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.store.telemetry import Metric, MetricType, ResourceSnapshot
from ctrlplane.telemetry import (
    CollectorError,
    CollectorLoadError,
    InstanceGoneError,
    ProcessCollector,
    PrometheusCollector,
    builtin_collectors,
    close_collectors,
    load_collectors,
)
from ctrlplane.types import Collector, Observation, Provider
from ctrlplane.workers.telemetry_collector import CollectionError, TelemetryCollector
from tests.helpers import FixedNodes, make_instance, serving, sqlite_connection, wait_for
from tests.processes import env_for, run_cli, started, stop
from tests.test_cli_instances import _kill_instances
from tests.test_reconciler import free_port

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]
# A process with a child that keeps a CPU busy: a tree of two, one of them measurable.
TREE = [
    PY,
    "-c",
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'while True: pass']); time.sleep(60)",
]

EXPOSITION = """\
# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{method="get",code="200"} 1027
http_requests_total{method="post",code="500"} 3
# TYPE temperature_celsius gauge
temperature_celsius{room="kitchen"} 21.5
temperature_celsius{room="cellar"} 12
# TYPE request_seconds histogram
request_seconds_bucket{le="0.1"} 4
request_seconds_bucket{le="0.5"} 9
request_seconds_bucket{le="+Inf"} 10
request_seconds_sum 2.5
request_seconds_count 10
# TYPE not_yet_measured gauge
not_yet_measured NaN
"""


class Endpoint:
    """A local Prometheus endpoint: ``/metrics`` is good, ``/broken`` is not."""

    def __init__(self) -> None:
        self.port = 0
        self.text = EXPOSITION

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.text, content_type="text/plain")

    async def broken(self, request: web.Request) -> web.Response:
        return web.Response(text="# TYPE x counter\nx{oops 1\n", content_type="text/plain")


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    e = Endpoint()
    app = web.Application()
    app.router.add_get("/metrics", e.metrics)
    app.router.add_get("/broken", e.broken)
    async with serving(app) as e.port:
        yield e


class Processes:
    """Starts instances through the real process provider; stops every one of them."""

    def __init__(self, provider: ProcessProvider, store: Store) -> None:
        self.provider = provider
        self.store = store
        self.started: list[Instance] = []

    async def start(
        self, name: str, command: list[str], *, metrics_url: str | None = None
    ) -> Instance:
        instance = make_instance(name, command, metrics_url=metrics_url)
        handle = await self.provider.start(instance)
        instance = msgspec.structs.replace(instance, handle=handle)
        self.started.append(instance)
        await self.store.instances.put(instance)
        return instance

    async def stop_all(self) -> None:
        for instance in self.started:
            try:
                await self.provider.stop(instance, timedelta(0))
            finally:
                assert instance.handle is not None
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(instance.handle.split(":")[0]), signal.SIGKILL)


@pytest_asyncio.fixture
async def processes(store: Store, tmp_path: Path) -> AsyncIterator[Processes]:
    p = Processes(ProcessProvider(tmp_path / "data"), store)
    try:
        yield p
    finally:
        await p.stop_all()


class Listed:
    """A provider double whose ``pids`` lists what the test says; it runs nothing."""

    name = "listed"

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids

    async def start(self, instance: Instance) -> str:
        raise NotImplementedError

    async def stop(self, instance: Instance, grace: timedelta) -> None:
        raise NotImplementedError

    async def status(self, instances: Sequence[Instance]) -> dict[str, Observation]:
        raise NotImplementedError

    async def pids(self, instance: Instance) -> list[int]:
        return list(self._pids)


class Exploding:
    """A plugin-shaped collector that fails every time."""

    name = "exploding"

    async def collect_metrics(self, instance: Instance) -> list[Metric]:
        raise RuntimeError("sensor on fire")

    async def collect_resources(self, instance: Instance) -> ResourceSnapshot | None:
        return None


class Constant:
    """A plugin-shaped collector with one gauge; built with the providers, as plugins are."""

    name = "constant"

    def __init__(self, providers: Mapping[str, Provider] | None = None) -> None:
        self.providers = providers
        self.closed = False

    async def collect_metrics(self, instance: Instance) -> list[Metric]:
        return [Metric(name="answer", type=MetricType.GAUGE, value=42.0, time=datetime.now(UTC))]

    async def collect_resources(self, instance: Instance) -> ResourceSnapshot | None:
        return None

    def close(self) -> None:
        self.closed = True


def _context() -> RunContext:
    async def publish(event: Event) -> int:
        raise AssertionError("the telemetry collector publishes nothing")

    return RunContext(
        worker=TelemetryCollector.name,
        run_id="r1",
        trigger=Trigger.TICK,
        attempt=1,
        publish=publish,
        log=structlog.get_logger(),
    )


def _dead_pid() -> int:
    child = subprocess.Popen([PY, "-c", "pass"])
    child.wait()
    return child.pid


# The process collector


async def test_process_collector_sums_the_process_tree(processes: Processes) -> None:
    instance = await processes.start("tree", TREE)

    async def grown() -> bool:
        return len(await processes.provider.pids(instance)) == 2

    await wait_for(grown, within=5)
    collector = ProcessCollector({"process": processes.provider})

    first = await collector.collect_resources(instance)
    assert first.processes == 2
    assert first.memory_rss > 1024 * 1024
    assert first.threads >= 2
    assert first.open_files is not None and first.open_files >= 6  # stdin, stdout, stderr each
    if sys.platform.startswith("linux"):
        assert first.read_bytes is not None and first.write_bytes is not None
    # psutil measures CPU between two looks: the first has nothing to compare with.
    assert first.cpu_percent == 0.0

    async def busy() -> bool:
        # The second look compares with the first: the spinning child shows.
        return (await collector.collect_resources(instance)).cpu_percent > 10

    await wait_for(busy, within=5, interval=0.05)
    assert await collector.collect_metrics(instance) == []


async def test_processes_that_vanish_are_skipped_and_none_at_all_is_a_gap() -> None:
    me = make_instance("me", SLEEPER, provider="listed")
    listed: Provider = Listed([os.getpid(), _dead_pid()])
    collector = ProcessCollector({"listed": listed})
    snapshot = await collector.collect_resources(me)
    assert snapshot.processes == 1 and snapshot.memory_rss > 0

    vanished: Provider = Listed([_dead_pid()])
    gone = ProcessCollector({"listed": vanished})
    with pytest.raises(InstanceGoneError, match="no running process") as caught:
        await gone.collect_resources(me)
    assert isinstance(caught.value, CollectorError)
    assert (caught.value.collector, caught.value.instance) == ("process", "me")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value)

    with pytest.raises(CollectorError, match="unknown provider 'listed'"):
        await ProcessCollector({}).collect_resources(me)


# The Prometheus collector


async def test_prometheus_samples_keep_their_names_types_and_labels(
    endpoint: Endpoint, store: Store
) -> None:
    collector = PrometheusCollector()
    try:
        instance = make_instance("web", SLEEPER, metrics_url=endpoint.url())
        metrics = await collector.collect_metrics(instance)
        assert await collector.collect_resources(instance) is None
        assert await collector.collect_metrics(make_instance("quiet", SLEEPER)) == []
    finally:
        await collector.close()
    seen = {(m.name, tuple(sorted(m.labels.items()))): m for m in metrics}
    get = seen[("http_requests_total", (("code", "200"), ("method", "get")))]
    assert (get.type, get.value) == (MetricType.COUNTER, 1027)
    kitchen = seen[("temperature_celsius", (("room", "kitchen"),))]
    assert (kitchen.type, kitchen.value) == (MetricType.GAUGE, 21.5)
    inf = seen[("request_seconds_bucket", (("le", "+Inf"),))]
    assert (inf.type, inf.value) == (MetricType.HISTOGRAM, 10)
    assert seen[("request_seconds_sum", ())].value == 2.5
    assert seen[("request_seconds_count", ())].type is MetricType.HISTOGRAM
    assert len(metrics) == 10
    assert math.isnan(seen[("not_yet_measured", ())].value)

    # Stored and read back: labels intact, the NaN left out, newest value per series.
    assert store.telemetry.record(instance.id, "prometheus", metrics) == 1
    later = [msgspec.structs.replace(get, value=1030, time=get.time + timedelta(seconds=1))]
    store.telemetry.record(instance.id, "prometheus", later)
    latest = await store.telemetry.latest_metrics(instance.id, get.time - timedelta(seconds=1))
    assert len(latest) == 9
    assert [m.value for m in latest if m.name == "http_requests_total"] == [1030, 3]
    assert await store.telemetry.latest_metrics(instance.id, get.time + timedelta(seconds=2)) == []


async def test_a_bad_endpoint_is_an_error_of_that_instance(endpoint: Endpoint) -> None:
    collector = PrometheusCollector(timeout=timedelta(seconds=2))
    try:
        cases = {
            endpoint.url("/broken"): "not the Prometheus text format",
            endpoint.url("/missing"): "HTTP 404",
            f"http://127.0.0.1:{free_port()}/metrics": "connection refused",
            "ftp://example.test/metrics": "not an http(s) URL",
        }
        for url, reason in cases.items():
            instance = make_instance("web", SLEEPER, metrics_url=url)
            with pytest.raises(CollectorError, match=re.escape(reason)) as caught:
                await collector.collect_metrics(instance)
            assert caught.value.collector == "prometheus" and url in caught.value.reason
        # The session survives the failures.
        good = make_instance("web", SLEEPER, metrics_url=endpoint.url())
        assert len(await collector.collect_metrics(good)) == 10
    finally:
        await collector.close()


# The worker


async def test_a_failing_collector_and_a_vanished_instance_do_not_stop_the_others(
    store: Store, processes: Processes, endpoint: Endpoint
) -> None:
    web = await processes.start("web", SLEEPER, metrics_url=endpoint.url())
    gone = await processes.start("gone", SLEEPER)
    await processes.provider.stop(gone, timedelta(0))  # still recorded as running
    stopped = await processes.start("stopped", SLEEPER, metrics_url=endpoint.url())
    await store.instances.set_state(stopped.id, InstanceState.STOPPED)
    collectors = builtin_collectors({"process": processes.provider})
    worker = TelemetryCollector(store, [*collectors.values(), Exploding()])
    try:
        with pytest.raises(CollectionError) as caught:
            await worker.run(_context())
    finally:
        await worker.close()
    failures = {(f.collector, f.instance): f.reason for f in caught.value.failures}
    # The instance whose process is gone is a gap, whichever collector tried it.
    assert failures == {("exploding", "web"): "RuntimeError: sensor on fire"}
    assert (
        str(caught.value)
        == "telemetry incomplete: exploding on 'web': RuntimeError: sensor on fire"
    )

    snapshot = await store.telemetry.latest_snapshot(web.id)
    assert snapshot is not None and snapshot.processes == 1 and snapshot.memory_rss > 0
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert len(await store.telemetry.latest_metrics(web.id, since)) == 9
    assert await store.telemetry.latest_snapshot(gone.id) is None
    assert await store.telemetry.latest_metrics(stopped.id, since) == []


async def test_an_instance_whose_process_died_is_a_gap_not_a_failure(
    store: Store, processes: Processes, endpoint: Endpoint
) -> None:
    web = await processes.start("web", SLEEPER, metrics_url=endpoint.url())
    # Its metrics endpoint went with it, as an instance's own endpoint does.
    dead_url = f"http://127.0.0.1:{free_port()}/metrics"
    died = await processes.start("died", SLEEPER, metrics_url=dead_url)
    await processes.provider.stop(died, timedelta(0))  # the reconciler is yet to notice
    worker = TelemetryCollector(store, builtin_collectors({"process": processes.provider}))
    try:
        collection = await worker.collect()
        with capture_logs() as logs:
            await worker.run(_context())  # does not raise: nothing failed
    finally:
        await worker.close()
    assert collection.failures == []
    gaps = {(g.collector, g.instance): g.reason for g in collection.gaps}
    assert set(gaps) == {("process", "died"), ("prometheus", "died")}
    assert "no running process" in gaps["process", "died"]
    assert "connection refused" in gaps["prometheus", "died"]
    assert (collection.instances, collection.snapshots) == (2, 1)
    assert await store.telemetry.latest_snapshot(web.id) is not None
    assert await store.telemetry.latest_snapshot(died.id) is None
    assert {e["log_level"] for e in logs} <= {"debug", "info"}
    told = [e for e in logs if e.get("instance") == "died"]
    assert {e["collector"] for e in told} == {"process", "prometheus"}
    assert all("exc_info" not in e for e in logs)


# SQLite only: it reads the statements from SQLite's trace.
@pytest.mark.sqlite_only
async def test_a_run_is_one_transaction(store: Store, endpoint: Endpoint) -> None:
    me: dict[str, Provider] = {"process": Listed([os.getpid()])}
    instances = [make_instance(f"w{n}", SLEEPER, metrics_url=endpoint.url()) for n in range(12)]
    for instance in instances:
        await store.instances.put(instance)
    worker = TelemetryCollector(store, builtin_collectors(me), concurrency=4)
    statements: list[str] = []
    await sqlite_connection(store).set_trace_callback(statements.append)
    try:
        collection = await worker.collect()
    finally:
        await sqlite_connection(store).set_trace_callback(None)  # type: ignore[arg-type]
        await worker.close()
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert (collection.instances, collection.snapshots) == (12, 12)
    assert (collection.metrics, collection.skipped, collection.failures) == (12 * 9, 12, [])
    since = datetime.now(UTC) - timedelta(minutes=1)
    for instance in instances:
        assert await store.telemetry.latest_snapshot(instance.id) is not None
        assert len(await store.telemetry.latest_metrics(instance.id, since)) == 9


async def test_a_hanging_or_misbehaving_collector_is_cut_off(store: Store) -> None:
    class Hanging(Exploding):
        name = "hanging"

        async def collect_metrics(self, instance: Instance) -> list[Metric]:
            await asyncio.sleep(60)
            return []

    class Lying(Exploding):
        name = "lying"

        async def collect_metrics(self, instance: Instance) -> list[Metric]:
            return {"not": "a list"}  # type: ignore[return-value]

    await store.instances.put(make_instance("web", SLEEPER))
    worker = TelemetryCollector(
        store, [Hanging(), Lying(), Constant()], collect_timeout=timedelta(milliseconds=100)
    )
    collection = await worker.collect()
    reasons = {f.collector: f.reason for f in collection.failures}
    assert reasons == {
        "hanging": "timed out after 0.1s",
        "lying": "collect_metrics returned dict, not a list of Metric",
    }
    assert collection.metrics == 1


async def test_at_most_concurrency_pairs_are_collected_at_once(store: Store) -> None:
    class Counting(Constant):
        name = "counting"
        in_flight = most = calls = 0

        async def collect_metrics(self, instance: Instance) -> list[Metric]:
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            return []

    for n in range(10):
        await store.instances.put(make_instance(f"w{n}", SLEEPER))
    counting = Counting()
    await TelemetryCollector(store, [counting], concurrency=3).collect()
    assert (counting.calls, counting.most) == (10, 3)


async def test_each_node_collects_its_own_instances_and_a_share_of_the_rest(
    store: Store,
) -> None:
    class Noting(Constant):
        def __init__(self, node: str, seen: list[tuple[str, str]]) -> None:
            super().__init__()
            self._node = node
            self._seen = seen

        async def collect_metrics(self, instance: Instance) -> list[Metric]:
            self._seen.append((self._node, instance.id))
            return await super().collect_metrics(instance)

    nodes = ["node-a", "node-b"]
    for n in range(30):
        placed = msgspec.structs.replace(
            make_instance(f"w{n}", SLEEPER, id=f"i-{n}"),
            # node-c is dead: its instances are collected where they are spread.
            node=None if n % 2 else ["node-a", "node-b", "node-c"][n % 3],
        )
        await store.instances.put(placed)
    seen: list[tuple[str, str]] = []
    workers = [
        TelemetryCollector(store, [Noting(node, seen)], nodes=FixedNodes(node, nodes))
        for node in nodes
    ]
    collections = await asyncio.gather(*(w.collect() for w in workers))
    assert sorted(i for _, i in seen) == sorted(f"i-{n}" for n in range(30))
    assert sum(c.instances for c in collections) == 30
    assert all(c.instances > 0 for c in collections)
    where = {i.id: i.node for i in await store.instances.all()}
    # A process collector reads local pids: an instance of a live node is
    # collected there.
    assert all(node == where[i] for node, i in seen if where[i] in nodes)


async def test_registering_collectors(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = TelemetryCollector(store, [Constant()])
    with pytest.raises(CollectorLoadError, match="registered already"):
        worker.register_collector(Constant())
    with pytest.raises(CollectorLoadError, match="is not a collector"):
        worker.register_collector(object())  # type: ignore[arg-type]
    worker.register_defaults(builtin_collectors({}))
    assert sorted(worker.collectors) == ["constant", "process", "prometheus"]

    eps = [
        EntryPoint(name="constant", value="tests.test_telemetry:Constant", group="g"),
        EntryPoint(name="process", value="tests.test_telemetry:Constant", group="g"),
    ]
    monkeypatch.setattr(ctrlplane.plugins, "entry_points", lambda *, group: eps[:1])
    providers: dict[str, Provider] = {}
    loaded = load_collectors(providers, group="g")
    assert sorted(loaded) == ["constant", "process", "prometheus"]
    plugin = loaded["constant"]
    assert isinstance(plugin, Constant) and plugin.providers is providers
    await close_collectors(loaded)
    assert plugin.closed
    monkeypatch.setattr(ctrlplane.plugins, "entry_points", lambda *, group: eps)
    with pytest.raises(CollectorLoadError, match="provided by entry point 'constant'"):
        load_collectors(providers, group="g")


async def test_the_control_plane_has_the_collector_and_its_plugins(config: Config) -> None:
    cp = ControlPlane(config, load_plugins=False)
    mine = Constant()
    cp.telemetry.register_collector(mine)
    async with cp:
        assert sorted(cp.telemetry.collectors) == ["constant", "process", "prometheus"]
        assert isinstance(cp.telemetry.collectors["constant"], Collector)
        info = {w.name: w for w in cp.scheduler.workers()}
        assert info["telemetry_collector"].interval == timedelta(seconds=10)
    assert mine.closed


# ``ctrlplane telemetry``


async def test_cli_telemetry_shows_the_latest_snapshot_and_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    site = tmp_path / "site"
    site.mkdir()
    (site / "metrics").write_text(EXPOSITION)
    port = free_port()
    config = tmp_path / "ctrlplane.toml"
    config.write_text(
        f"""
telemetry_flush_interval = "1s"

[[instances]]
name = "web"
command = ["{PY}", "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", "{site}"]
metrics_url = "http://127.0.0.1:{port}/metrics"
"""
    )

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            run_cli, ["telemetry", *args, "--data-dir", str(data)], env_for()
        )

    try:
        with started(
            ["run", "--config", str(config), "--data-dir", str(data)],
            env_for(),
            tmp_path / "run.log",
        ) as proc:
            await wait_for(lambda: read_server_info(data) is not None, within=30)

            async def collected() -> bool:
                out = await cli("web", "--json")
                if out.returncode != 0:
                    return False
                shown = json.loads(out.stdout)
                # No snapshot yet: absent (a field with no value is never null).
                return "snapshot" in shown and len(shown["metrics"]) == 9

            await wait_for(collected, within=30, interval=0.3)
            shown = json.loads((await cli("web", "--json", "--since", "1h")).stdout)
            assert shown["instance"] == "web" and shown["instance_id"].startswith("i-")
            assert shown["snapshot"]["processes"] == 1
            assert shown["snapshot"]["memory_rss"] > 0
            counter = next(
                m
                for m in shown["metrics"]
                if m["name"] == "http_requests_total" and m["labels"]["method"] == "get"
            )
            assert counter["type"] == "counter" and counter["value"] == 1027

            table = (await cli("web")).stdout.splitlines()
            assert table[0].startswith("instance web (i-")
            assert table[1].startswith("resources (") and ": 1 process, cpu " in table[1]
            rows = {line.split()[0]: line.split()[1:3] for line in table[3:]}
            assert rows["METRIC"] == ["TYPE", "VALUE"]
            assert rows['http_requests_total{code="200",method="get"}'] == ["counter", "1027"]
            assert rows['request_seconds_bucket{le="+Inf"}'] == ["histogram", "10"]
            assert rows['temperature_celsius{room="kitchen"}'] == ["gauge", "21.5"]

            unknown = await cli("nope")
            assert unknown.returncode == 1
            assert "no instance 'nope'" in unknown.stderr
            assert await asyncio.to_thread(stop, proc) == 0
    finally:
        _kill_instances(data)


def test_cli_telemetry_refuses_a_bad_since(tmp_path: Path) -> None:
    for since in ("soon", "0s"):
        result = run_cli(
            ["telemetry", "web", "--since", since, "--data-dir", str(tmp_path)], env_for()
        )
        assert result.returncode == 2
        assert "--since" in result.stderr
