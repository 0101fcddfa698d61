"""``/metrics``: scraped from a real control plane over HTTP and read back with
prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.messages import Event
from ctrlplane.store.certs import Certificate, Domain
from ctrlplane.store.db import Store
from ctrlplane.store.health import CheckSpec, HealthStatus
from ctrlplane.store.instances import InstanceState
from ctrlplane.web.metrics import Metrics
from tests.helpers import embedded_again, make_instance, wait_for

# The built-in workers that would change what the test puts in the store.
QUIET = ["reconciler", "health_runner", "remediator", "cert_renewer", "gc", "telemetry_collector"]
HOST = "metrics.example.test"
EXPIRES = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class Ticking:
    """Runs every second."""

    name = "ticking"
    interval = timedelta(seconds=1)

    async def run(self, ctx: RunContext) -> None:
        return None


class Failing:
    """Fails every event it is given: with one attempt, each is dead-lettered."""

    name = "failing"
    interval = timedelta(0)
    subscriptions = ("metrics.fail",)
    max_attempts = 1

    async def run(self, ctx: RunContext) -> None:
        raise RuntimeError("broken on purpose")


class Holding:
    """Holds each run until the test lets it go; takes one event at a time."""

    name = "holding"
    interval = timedelta(0)
    subscriptions = ("metrics.hold",)
    prefetch = 1

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, ctx: RunContext) -> None:
        self.entered.set()
        await self.release.wait()


class Scrape:
    """One scrape of ``/metrics``, parsed."""

    def __init__(self, status: int, content_type: str, text: str) -> None:
        self.status = status
        self.content_type = content_type
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


async def scrape(url: str) -> Scrape:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=15)) as response,
    ):
        return Scrape(response.status, response.headers["Content-Type"], await response.text())


async def scraped_until(
    url: str, condition: str, check: Callable[[Scrape], bool], within: float = 30
) -> Scrape:
    """Scrape until ``check(scrape)`` holds; the last scrape."""
    last: list[Scrape] = []

    async def holds() -> bool:
        last.append(await scrape(url))
        return check(last[-1])

    try:
        await wait_for(holds, within=within, interval=0.2)
    except AssertionError:
        raise AssertionError(f"/metrics never showed {condition}") from None
    return last[-1]


@pytest_asyncio.fixture
async def plane(config: Config) -> AsyncIterator[tuple[ControlPlane, Holding]]:
    """A control plane on the test server with the three workers above."""
    cfg = msgspec.structs.replace(config, disabled_workers=QUIET)
    cp = ControlPlane(cfg, load_plugins=False)
    holding = Holding()
    for worker in (Ticking(), Failing(), holding):
        cp.register(worker)
    await cp.start()
    try:
        yield cp, holding
    finally:
        holding.release.set()
        await cp.stop()


async def fill_store(store: Store) -> None:
    """An instance with two checks (one healthy) and a domain with a certificate."""
    instance = make_instance("web", state=InstanceState.RUNNING)
    await store.instances.put(instance)
    await store.instances.put(make_instance("db", state=InstanceState.FAILED))
    await store.health.set_checks(instance.id, [CheckSpec(name="up"), CheckSpec(name="slow")])
    up = next(s for s in await store.health.states(instance.id) if s.name == "up")
    store.health.record([], [msgspec.structs.replace(up, status=HealthStatus.HEALTHY)])
    # Batched: on disk before the scrape that counts it.
    await store.writer.flush()
    await store.domains.sync(
        [
            Domain(
                hostname=HOST,
                instance="web",
                issuer="local",
                cert_lifetime=timedelta(days=90),
                renew_before=timedelta(days=30),
            )
        ]
    )
    # An older certificate too: the current one is the one valid longest.
    for serial, not_after in (("1", EXPIRES - timedelta(days=90)), ("2", EXPIRES)):
        await store.certificates.add(
            Certificate(
                serial=serial,
                hostname=HOST,
                issuer="local",
                not_before=not_after - timedelta(days=90),
                not_after=not_after,
                cert_path="c.pem",
                key_path="k.pem",
            )
        )


async def test_metrics_count_runs_dead_letters_and_read_the_store(
    plane: tuple[ControlPlane, Holding],
) -> None:
    cp, holding = plane
    url = cp.http_url
    assert url is not None
    await fill_store(cp.store)
    await cp.bus.publish_event(Event(type="metrics.fail", source="test", id="f-1"))

    first = await scraped_until(
        url,
        "a tick's run and a dead letter",
        lambda s: (
            (s.value("ctrlplane_runs_total", worker="ticking", outcome="ok") or 0) >= 1
            and s.value("ctrlplane_dead_letters_total", worker="failing") == 1
        ),
    )
    assert first.status == 200
    assert first.content_type.startswith("text/plain; version=")
    ok = first.value("ctrlplane_runs_total", worker="ticking", outcome="ok")
    assert ok is not None and ok >= 1
    # Each run is timed; each tick's lateness is measured.
    assert first.value("ctrlplane_run_duration_seconds_count", worker="ticking") == ok
    lateness = first.value("ctrlplane_tick_lateness_seconds_count", worker="ticking")
    assert lateness is not None and lateness >= ok
    assert first.value("ctrlplane_runs_total", worker="failing", outcome="dead_lettered") == 1
    assert first.value("ctrlplane_run_duration_seconds_count", worker="failing") == 1
    # Every worker's series exists from the start, at zero.
    assert first.value("ctrlplane_dead_letters_total", worker="ticking") == 0
    assert first.value("ctrlplane_skipped_ticks_total", worker="audit_recorder") == 0
    assert first.value("ctrlplane_running_runs", worker="failing") == 0
    # What the store holds, read at scrape time (every state and status listed).
    assert first.value("ctrlplane_instances", state="running") == 1
    assert first.value("ctrlplane_instances", state="failed") == 1
    assert first.value("ctrlplane_instances", state="stopped") == 0
    assert first.value("ctrlplane_checks", status="healthy") == 1
    assert first.value("ctrlplane_checks", status="unknown") == 1
    assert first.value("ctrlplane_checks", status="unhealthy") == 0
    expiry = first.value("ctrlplane_certificate_expiry_timestamp_seconds", hostname=HOST)
    assert expiry == EXPIRES.timestamp()
    assert first.value("ctrlplane_nats_connected") == 1
    assert first.value("ctrlplane_nats_reconnects_total") == 0
    lag = first.value("ctrlplane_event_loop_lag_seconds")
    assert lag is not None and 0 <= lag < 5
    assert "process_resident_memory_bytes" in first.names()

    # A run in progress, and events waiting behind it on the consumer.
    for i in range(4):
        await cp.bus.publish_event(Event(type="metrics.hold", source="test", id=f"h-{i}"))
    async with asyncio.timeout(30):
        await holding.entered.wait()
    busy = await scraped_until(
        url,
        "a backlog behind a running run",
        lambda s: (
            (s.value("ctrlplane_consumer_backlog", worker="holding", source="event") or 0) >= 1
        ),
    )
    assert busy.value("ctrlplane_running_runs", worker="holding") == 1
    assert busy.value("ctrlplane_consumer_backlog", worker="ticking", source="tick") is not None
    holding.release.set()
    # The backlog is read before the counters within a scrape: wait for both.
    done = await scraped_until(
        url,
        "the held runs done and no backlog",
        lambda s: (
            s.value("ctrlplane_runs_total", worker="holding", outcome="ok") == 4
            and s.value("ctrlplane_consumer_backlog", worker="holding", source="event") == 0
        ),
    )
    assert done.value("ctrlplane_running_runs", worker="holding") == 0


@pytest_asyncio.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane on its own embedded server, which the test stops."""
    config = Config(
        data_dir=tmp_path / "data",
        subject_prefix=f"met{uuid.uuid4().hex[:8]}",
        stop_grace=timedelta(seconds=2),
        disabled_workers=QUIET,
    )
    cp = ControlPlane(config, load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def test_with_nats_away_the_scrape_answers_and_says_so(embedded: ControlPlane) -> None:
    url = embedded.http_url
    assert url is not None and embedded.server is not None
    await fill_store(embedded.store)
    before = await scraped_until(
        url, "instances", lambda s: s.value("ctrlplane_instances", state="running") == 1
    )
    assert before.value("ctrlplane_nats_connected") == 1
    backlog = before.value("ctrlplane_consumer_backlog", worker="audit_recorder", source="event")
    assert backlog == 0
    port = int(embedded.server.info.url.rsplit(":", 1)[1])
    await embedded.server.stop()
    away = await scraped_until(
        url, "NATS disconnected", lambda s: s.value("ctrlplane_nats_connected") == 0
    )
    assert away.status == 200
    # The store still answers; the backlog keeps its last reading.
    assert away.value("ctrlplane_instances", state="running") == 1
    kept = away.value("ctrlplane_consumer_backlog", worker="audit_recorder", source="event")
    assert kept is not None
    # The broker back on its port (same users): connected again, once more.
    again = embedded_again(embedded, port)
    await again.start()
    try:
        back = await scraped_until(
            url, "NATS connected again", lambda s: s.value("ctrlplane_nats_connected") == 1
        )
        assert back.value("ctrlplane_nats_reconnects_total") == 1
        await embedded.stop()
    finally:
        await again.stop()


async def test_sources_not_yet_open_leave_their_figures_out(tmp_path: Path) -> None:
    # Neither the bus connected nor the store opened: nothing to read, no error.
    metrics = Metrics(Bus(), Store(tmp_path / "never.db"), list)
    scrape = Scrape(200, "", (await metrics.render()).decode())
    assert scrape.value("ctrlplane_nats_connected") == 0
    assert scrape.value("ctrlplane_nats_reconnects_total") is None
    assert not any(name == "ctrlplane_instances" for name in scrape.names())
    assert not (tmp_path / "never.db").exists()


async def test_the_store_is_counted_on_each_backend(store: Store) -> None:
    await fill_store(store)
    metrics = Metrics(Bus(), store, list)
    scrape = Scrape(200, "", (await metrics.render()).decode())
    assert scrape.value("ctrlplane_instances", state="running") == 1
    assert scrape.value("ctrlplane_instances", state="failed") == 1
    assert scrape.value("ctrlplane_checks", status="healthy") == 1
    assert scrape.value("ctrlplane_checks", status="unknown") == 1
    expiry = scrape.value("ctrlplane_certificate_expiry_timestamp_seconds", hostname=HOST)
    assert expiry == EXPIRES.timestamp()
    # A domain no longer declared (its certificates forgotten) leaves the figures.
    await store.domains.sync([])
    scrape = Scrape(200, "", (await metrics.render()).decode())
    assert scrape.value("ctrlplane_certificate_expiry_timestamp_seconds", hostname=HOST) is None


def test_runs_are_counted_per_registry() -> None:
    # Two control planes in one process: each counts its own runs.
    one = Metrics(Bus(), Store(Path("unused-1.db")), list)
    two = Metrics(Bus(), Store(Path("unused-2.db")), list)
    now = time.time()
    one.run_started("w", now + 0.25, now)
    one.recorded("w", "ok", 0.5)
    one.run_ended("w")
    one.recorded("w", "skipped", None)
    one.recorded("w", "dead_lettered", None)
    sample = one.registry.get_sample_value
    assert sample("ctrlplane_runs_total", {"worker": "w", "outcome": "ok"}) == 1
    other = two.registry.get_sample_value
    assert other("ctrlplane_runs_total", {"worker": "w", "outcome": "ok"}) is None
    assert sample("ctrlplane_run_duration_seconds_count", {"worker": "w"}) == 1
    assert sample("ctrlplane_run_duration_seconds_sum", {"worker": "w"}) == 0.5
    assert sample("ctrlplane_tick_lateness_seconds_sum", {"worker": "w"}) == pytest.approx(0.25)
    assert sample("ctrlplane_running_runs", {"worker": "w"}) == 0
    assert sample("ctrlplane_skipped_ticks_total", {"worker": "w"}) == 1
    assert sample("ctrlplane_dead_letters_total", {"worker": "w"}) == 1
    # A negative lateness is clock skew between processes: counted as on time.
    one.run_started("w", now, now + 3)
    assert sample("ctrlplane_tick_lateness_seconds_bucket", {"worker": "w", "le": "0.005"}) == 1
    assert sample("ctrlplane_running_runs", {"worker": "w"}) == 1
    # A slot that began before the process did is late from the process's start.
    one.run_started("w", now + 10, now - 3600)
    assert sample("ctrlplane_tick_lateness_seconds_bucket", {"worker": "w", "le": "5.0"}) == 2
    assert sample("ctrlplane_tick_lateness_seconds_bucket", {"worker": "w", "le": "10.0"}) == 2
    assert sample("ctrlplane_tick_lateness_seconds_bucket", {"worker": "w", "le": "30.0"}) == 3


@pytest.mark.parametrize("outcome", ["error", "timeout", "retry", "cancelled"])
def test_only_skips_and_dead_letters_have_counters_of_their_own(outcome: str) -> None:
    metrics = Metrics(Bus(), Store(Path("unused.db")), list)
    metrics.recorded("w", outcome, 1.0)
    sample = metrics.registry.get_sample_value
    assert sample("ctrlplane_runs_total", {"worker": "w", "outcome": outcome}) == 1
    assert sample("ctrlplane_skipped_ticks_total", {"worker": "w"}) == 0
    assert sample("ctrlplane_dead_letters_total", {"worker": "w"}) == 0


def test_every_metric_is_in_the_readme_table(tmp_path: Path) -> None:
    metrics = Metrics(Bus(), Store(tmp_path / "never.db"), list)
    served = set()
    for family in text_string_to_metric_families(asyncio.run(metrics.render()).decode()):
        if family.name.startswith("ctrlplane_"):
            suffix = "_total" if family.type == "counter" else ""
            served.add(family.name + suffix)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(ctrlplane_\w+)` \|", section, re.MULTILINE))
    assert served == documented
