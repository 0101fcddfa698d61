"""Pause, resume and run-now of workers: control planes on the test NATS, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext, Worker
from ctrlplane.api import (
    RemoteError,
    WorkerControlReply,
    WorkerControlRequest,
    WorkerRunReply,
    WorkerRunRequest,
    request,
)
from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.controls import RUN_HEADER, RunRequest, new_run_request
from ctrlplane.bus.server import read_server_info
from ctrlplane.store.runs import Outcome, Trigger, WorkerRun
from tests.helpers import wait_for
from tests.processes import env_for, run_cli, started, stop

BUILT_INS = [
    "reconciler",
    "health_runner",
    "telemetry_collector",
    "gc",
    "cert_renewer",
    "remediator",
    "audit_recorder",
]


class Beats:
    """Periodic, every 200 ms: counts its runs."""

    name = "beats"
    interval = timedelta(milliseconds=200)

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: RunContext) -> None:
        self.runs += 1


class Slow:
    """Periodic, hourly (it runs at start), each run 0.4 s: keeps when each ran."""

    name = "slow"
    interval = timedelta(hours=1)

    def __init__(self) -> None:
        self.spans: list[tuple[float, float, str]] = []
        self.started = asyncio.Event()

    async def run(self, ctx: RunContext) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        self.started.set()
        await asyncio.sleep(0.4)
        self.spans.append((began, loop.time(), ctx.trigger.value))


class Counts:
    """Event-driven: keeps the ids of the events it handled."""

    name = "counts"
    interval = timedelta(0)
    subscriptions = ("control-test.item",)

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.seen.append(ctx.event.id)


class AtStart:
    """Runs once at start."""

    name = "at-start"
    interval = timedelta(0)

    async def run(self, ctx: RunContext) -> None:
        return None


def _config(config: Config, tmp_path: Path, node: str = "a") -> Config:
    """Only the test's workers, one shared store, a data dir per node."""
    return msgspec.structs.replace(
        config,
        node=node,
        data_dir=tmp_path / node,
        store_url=f"sqlite://{tmp_path / 'shared.db'}",
        disabled_workers=BUILT_INS,
    )


@contextlib.asynccontextmanager
async def running(cfg: Config, *workers: Worker) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(cfg, load_plugins=False)
    for w in workers:
        cp.register(w)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def _pause(bus: Bus, worker: str) -> WorkerControlReply:
    body = WorkerControlRequest(worker=worker, by="test")
    return await request(bus, "worker_pause", body, WorkerControlReply, within=10)


async def _resume(bus: Bus, worker: str) -> WorkerControlReply:
    body = WorkerControlRequest(worker=worker, by="test")
    return await request(bus, "worker_resume", body, WorkerControlReply, within=10)


async def _run(bus: Bus, worker: str) -> WorkerRunReply:
    body = WorkerRunRequest(worker=worker, by="test")
    return await request(bus, "worker_run", body, WorkerRunReply, within=10)


def _paused(cp: ControlPlane, worker: str) -> bool:
    (info,) = [w for w in cp.scheduler.workers() if w.name == worker]
    return info.paused


def _idle(cp: ControlPlane, worker: str) -> bool:
    (info,) = [w for w in cp.scheduler.workers() if w.name == worker]
    return not info.running


async def _runs(cp: ControlPlane, worker: str) -> list[WorkerRun]:
    return await cp.store.runs.list(worker=worker, limit=1000)


def _paused_skips(runs: Sequence[WorkerRun]) -> list[WorkerRun]:
    return [r for r in runs if r.outcome is Outcome.SKIPPED and r.error == "paused"]


async def test_a_paused_periodic_worker_skips_its_ticks_and_runs_again_on_resume(
    config: Config, tmp_path: Path
) -> None:
    beats = Beats()
    async with running(_config(config, tmp_path), beats) as cp:
        await wait_for(lambda: beats.runs >= 1)
        reply = await _pause(cp.bus, "beats")
        assert (reply.worker, reply.paused, reply.changed) == ("beats", True, True)
        assert reply.by == "test"
        await wait_for(lambda: _paused(cp, "beats") and _idle(cp, "beats"))
        ran = beats.runs

        async def skipped(n: int) -> bool:
            return len(_paused_skips(await _runs(cp, "beats"))) >= n

        await wait_for(lambda: skipped(3), within=15, interval=0.1)
        assert beats.runs == ran  # ticks consumed and recorded, never run
        skips = _paused_skips(await _runs(cp, "beats"))
        assert all(r.trigger is Trigger.TICK and r.trigger_ref for r in skips)
        again = await _pause(cp.bus, "beats")
        assert (again.paused, again.changed, again.by) == (True, False, "test")

        resumed = await _resume(cp.bus, "beats")
        assert (resumed.paused, resumed.changed) == (False, True)
        await wait_for(lambda: beats.runs > ran, within=15)
        assert not _paused(cp, "beats")


async def test_a_paused_event_worker_leaves_its_events_waiting_and_handles_each_once_on_resume(
    config: Config, tmp_path: Path
) -> None:
    counts = Counts()
    async with running(_config(config, tmp_path), counts) as cp:
        await cp.bus.publish_event(Event(type="control-test.item", source="test", id="before"))
        await wait_for(lambda: counts.seen == ["before"])
        await _pause(cp.bus, "counts")
        await wait_for(lambda: _paused(cp, "counts"))
        ids = [f"e-{i}" for i in range(20)]
        for i in ids:
            await cp.bus.publish_event(Event(type="control-test.item", source="test", id=i))
        # A bounded wait for what must not happen: longer than a pull
        # request's life (5 s would be the worst case), so a leak would show.
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: len(counts.seen) > 1, within=2.0)
        assert counts.seen == ["before"]

        await _resume(cp.bus, "counts")
        await wait_for(lambda: len(counts.seen) >= 21, within=20)
        # Settle: anything handled twice would show up by now.
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: len(counts.seen) > 21, within=1.0)
        assert sorted(counts.seen[1:]) == sorted(ids)
        assert len(counts.seen) == 21


async def test_a_pause_holds_across_a_restart(config: Config, tmp_path: Path) -> None:
    cfg = _config(config, tmp_path)
    async with running(cfg, Beats()) as cp:
        await _pause(cp.bus, "beats")
    beats = Beats()
    async with running(cfg, beats) as cp:
        # Paused from the start: no tick of this process ever ran.
        assert _paused(cp, "beats")

        async def skipped() -> bool:
            return len(_paused_skips(await _runs(cp, "beats"))) >= 2

        await wait_for(skipped, within=15, interval=0.1)
        assert beats.runs == 0
        await _resume(cp.bus, "beats")
        await wait_for(lambda: beats.runs >= 1, within=15)


async def test_a_pause_is_seen_by_every_control_plane_on_the_nats(
    config: Config, tmp_path: Path
) -> None:
    a_beats, b_beats = Beats(), Beats()
    async with (
        running(_config(config, tmp_path, "a"), a_beats) as a,
        running(_config(config, tmp_path, "b"), b_beats) as b,
    ):
        loop = asyncio.get_running_loop()
        began = loop.time()
        await _pause(a.bus, "beats")
        await wait_for(lambda: _paused(a, "beats") and _paused(b, "beats"), within=5)
        print(f"pause seen by both processes in {loop.time() - began:.3f}s")
        await wait_for(lambda: _idle(a, "beats") and _idle(b, "beats"))
        ran = a_beats.runs + b_beats.runs

        async def skipped() -> bool:
            return len(_paused_skips(await _runs(a, "beats"))) >= 3

        await wait_for(skipped, within=15, interval=0.1)
        assert a_beats.runs + b_beats.runs == ran
        await _resume(b.bus, "beats")
        await wait_for(lambda: not _paused(a, "beats") and not _paused(b, "beats"), within=5)
        await wait_for(lambda: a_beats.runs + b_beats.runs > ran, within=15)


async def test_run_now_runs_once_more_after_the_current_run_never_overlapping(
    config: Config, tmp_path: Path
) -> None:
    slow = Slow()
    async with running(_config(config, tmp_path), slow) as cp:
        async with asyncio.timeout(10):
            await slow.started.wait()  # the start's tick is running
        first = await _run(cp.bus, "slow")
        second = await _run(cp.bus, "slow")
        refs = [*first.refs, *second.refs]
        assert len(set(refs)) == 2 and first.nodes is None
        await wait_for(lambda: len(slow.spans) >= 3, within=15)

        async def recorded() -> bool:
            return len(await _runs(cp, "slow")) >= 3

        await wait_for(recorded)
        # Nothing more comes: exactly one extra run per request.
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: len(slow.spans) > 3, within=1.0)
        spans = sorted(slow.spans)
        assert [t for _, _, t in spans] == ["tick", "manual", "manual"]
        for (_, end, _), (begin, _, _) in itertools.pairwise(spans):
            assert end <= begin, spans  # one at a time
        runs = await _runs(cp, "slow")
        manual = sorted(r.trigger_ref or "" for r in runs if r.trigger is Trigger.MANUAL)
        assert manual == sorted(refs)
        assert all(r.outcome is Outcome.OK for r in runs)
        # A run asked for completes no slot: only the start's tick is in the ledger.
        kv = await cp.bus.js.key_value(cp.bus.subjects.slots_bucket)
        assert [k for k in await kv.keys() if k.startswith("slow.")] == [
            str(next(r.trigger_ref for r in runs if r.trigger is Trigger.TICK)).replace("/", ".")
        ]


class OnEachNode:
    """Node-scoped, hourly: counts its runs asked for now."""

    name = "on-each-node"
    interval = timedelta(hours=1)
    scope = "node"

    def __init__(self) -> None:
        self.manual = 0

    async def run(self, ctx: RunContext) -> None:
        if ctx.trigger.value == "manual":
            self.manual += 1


async def test_run_now_of_a_node_scoped_worker_runs_on_every_live_node_or_the_one_named(
    config: Config, tmp_path: Path
) -> None:
    on_a, on_b = OnEachNode(), OnEachNode()
    async with (
        running(_config(config, tmp_path, "a"), on_a) as a,
        running(_config(config, tmp_path, "b"), on_b),
    ):
        await wait_for(lambda: a.nodes.live() == ["a", "b"])
        reply = await _run(a.bus, "on-each-node")
        assert reply.nodes == ["a", "b"]
        for node, ref in zip(reply.nodes, reply.refs, strict=True):
            assert ref.startswith(f"on-each-node/{node}/run/")
        await wait_for(lambda: (on_a.manual, on_b.manual) == (1, 1))
        body = WorkerRunRequest(worker="on-each-node", node="b", by="test")
        one = await request(a.bus, "worker_run", body, WorkerRunReply, within=10)
        assert one.nodes == ["b"]
        await wait_for(lambda: on_b.manual == 2)
        assert on_a.manual == 1


async def test_run_now_is_refused_for_a_paused_an_event_or_an_unknown_worker(
    config: Config, tmp_path: Path
) -> None:
    slow, counts = Slow(), Counts()
    async with running(_config(config, tmp_path), slow, counts, AtStart()) as cp:
        for call in (_run, _pause, _resume):
            with pytest.raises(RemoteError) as once:
                await call(cp.bus, "at-start")
            assert once.value.code == 400 and "runs once at start" in once.value.message
        await _pause(cp.bus, "slow")
        with pytest.raises(RemoteError) as paused:
            await _run(cp.bus, "slow")
        assert paused.value.code == 400 and "is paused (by test" in paused.value.message
        assert "ctrlplane worker resume slow" in paused.value.message
        body = WorkerRunRequest(worker="slow", node="a", by="test")
        with pytest.raises(RemoteError) as cluster:
            await request(cp.bus, "worker_run", body, WorkerRunReply, within=10)
        assert cluster.value.code == 400 and "cluster-scoped" in cluster.value.message
        with pytest.raises(RemoteError) as event:
            await _run(cp.bus, "counts")
        assert event.value.code == 400 and "event-driven" in event.value.message
        for call in (_run, _pause, _resume):
            with pytest.raises(RemoteError) as unknown:
                await call(cp.bus, "slwo")
            assert unknown.value.code == 404
            assert unknown.value.message == "no worker 'slwo' (did you mean 'slow'?)"


async def test_a_run_request_that_reaches_a_paused_worker_is_recorded_skipped(
    config: Config, tmp_path: Path
) -> None:
    # Asked for before the pause, delivered after it: recorded, not run.
    slow = Slow()
    async with running(_config(config, tmp_path), slow) as cp:
        await wait_for(lambda: len(slow.spans) == 1)
        await _pause(cp.bus, "slow")
        await wait_for(lambda: _paused(cp, "slow"))
        asked = new_run_request("slow", "test")
        await cp.bus.js.publish(
            cp.bus.subjects.tick("slow"),
            msgspec.json.encode(asked),
            headers={"Nats-Msg-Id": asked.ref, RUN_HEADER: "1"},
        )

        async def manual() -> list[WorkerRun]:
            return [r for r in await _runs(cp, "slow") if r.trigger is Trigger.MANUAL]

        async def recorded() -> bool:
            return bool(await manual())

        await wait_for(recorded)
        (run,) = await manual()
        assert (run.outcome, run.error, run.trigger_ref) == (Outcome.SKIPPED, "paused", asked.ref)
        assert len(slow.spans) == 1


async def test_a_forged_run_request_is_dead_lettered(config: Config, tmp_path: Path) -> None:
    slow = Slow()
    async with running(_config(config, tmp_path), slow) as cp:
        await wait_for(lambda: len(slow.spans) == 1)
        other = RunRequest(worker="other", id="x", by="test", at=new_run_request("s", "t").at)
        await cp.bus.js.publish(
            cp.bus.subjects.tick("slow"),
            msgspec.json.encode(other),
            headers={"Nats-Msg-Id": other.ref, RUN_HEADER: "1"},
        )

        async def refused() -> bool:
            runs = await _runs(cp, "slow")
            return any(r.outcome is Outcome.DEAD_LETTERED for r in runs)

        await wait_for(refused)
        (run,) = [r for r in await _runs(cp, "slow") if r.outcome is Outcome.DEAD_LETTERED]
        assert run.trigger is Trigger.MANUAL and "'other'" in (run.error or "")
        assert len(slow.spans) == 1


# --------------------------------------------------------------------------
# The CLI, against a real `ctrlplane run`.


async def test_the_worker_commands_against_a_running_control_plane(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text(
        'workers = ["tests.control_workers:Hourly", "tests.control_workers:Listens"]\n'
        f"disabled_workers = {json.dumps(BUILT_INS)}\n",
        encoding="utf-8",
    )
    data = tmp_path / "data"
    env = env_for()
    at = ["--data-dir", str(data)]

    async def cli(*args: str) -> tuple[int, str, str]:
        result = await asyncio.to_thread(run_cli, [*args, *at], env)
        return result.returncode, result.stdout, result.stderr

    async def hourly() -> dict[str, object] | None:
        code, out, _ = await cli("workers", "--json")
        found = [w for w in json.loads(out) if w["name"] == "hourly"] if code == 0 else []
        return found[0] if found else None

    with started(["run", "--config", str(config), *at], env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)

        async def up() -> bool:
            return await hourly() is not None

        await wait_for(up, within=30, interval=0.5)
        code, out, err = await cli("worker", "pause", "hourly")
        assert (code, out.strip()) == (0, "hourly: paused"), err
        w = await hourly()
        assert w is not None and w["paused"] is True
        code, out, _ = await cli("workers")
        lines = out.splitlines()
        (row,) = [line for line in lines if " hourly " in line]
        header = lines[0]
        assert row[header.index("PAUSED") : header.index("RUNS")].strip() == "yes"
        code, out, _ = await cli("worker", "pause", "hourly")
        assert code == 0 and out.startswith("hourly: already paused (since ")
        assert out.rstrip().endswith(")") and "by " in out

        code, _, err = await cli("worker", "run", "hourly")
        assert code == 1 and "is paused" in err and "ctrlplane worker resume hourly" in err
        code, out, err = await cli("worker", "resume", "hourly", "--json")
        assert code == 0, err
        assert json.loads(out)["paused"] is False
        code, out, err = await cli("worker", "run", "hourly")
        assert code == 0 and out.startswith("hourly: run requested (ref hourly/run/"), err
        ref = out.strip().rsplit("ref ", 1)[1].rstrip(")")

        async def ran() -> bool:
            code, out, _ = await cli("runs", "hourly", "--json")
            return code == 0 and any(r.get("ref") == ref for r in json.loads(out))

        await wait_for(ran, within=30, interval=0.5)
        code, out, _ = await cli("runs", "hourly", "--json")
        (manual,) = [r for r in json.loads(out) if r.get("ref") == ref]
        assert (manual["trigger"], manual["outcome"]) == ("manual", "ok")

        code, _, err = await cli("worker", "run", "listens")
        assert code == 1 and "event-driven" in err
        code, _, err = await cli("worker", "pause", "hourlyy")
        assert code == 1 and "did you mean 'hourly'" in err
        code, _, err = await cli("worker", "pause", "Not.A.Name")
        assert code == 2 and "not a worker name" in err
        assert await asyncio.to_thread(stop, proc) == 0
