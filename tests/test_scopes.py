"""Worker scopes: node-scoped workers run once per node per slot (issue 11).

Against the real nats-server, with the Scheduler directly: two nodes of two
processes each (a process is a Scheduler on a connection of its own), and a
process of a node killed mid-run as a real OS process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from ctrlplane.actors import RunContext, Scheduler, SchedulerStateError, Scope
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.store import Outcome, Store
from tests.helpers import wait_for
from tests.processes import ROOT, env_for
from tests.scope_workers import Hold, runs_of

NODES = ("node-a", "node-b")


@dataclass(frozen=True)
class _Run:
    worker: str
    node: str | None
    slot: int
    process: str
    began: float
    ended: float


class Beat:
    """A worker whose runs last long enough for overlapping ones to show."""

    def __init__(self, name: str, scope: Scope, runs: list[_Run], process: str) -> None:
        self.name = name
        self.scope = scope
        self.interval = timedelta(seconds=0.3)
        self._runs = runs
        self._process = process

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        began = time.monotonic()
        await asyncio.sleep(0.05)
        self._runs.append(
            _Run(self.name, ctx.tick.node, ctx.tick.slot, self._process, began, time.monotonic())
        )


@pytest_asyncio.fixture
async def buses(nats_server: ServerInfo, subjects: Subjects) -> AsyncIterator[list[Bus]]:
    """Four connections: two processes on each of two nodes."""
    out = [Bus(subjects, name=f"p{i}") for i in range(4)]
    try:
        for b in out:
            await b.connect(nats_server.client_url)
        yield out
    finally:
        for b in out:
            await b.close()


async def test_a_node_scoped_worker_runs_once_per_node_per_slot(
    buses: list[Bus], store: Store
) -> None:
    runs: list[_Run] = []
    schedulers = []
    for i, bus in enumerate(buses):
        node, process = NODES[i // 2], f"{NODES[i // 2]}-p{i % 2}"
        s = Scheduler(bus, runs=store.runs, process=process, node=node)
        s.register(Beat("beat", Scope.NODE, runs, process))
        s.register(Beat("solo", Scope.CLUSTER, runs, process))
        schedulers.append(s)
    await asyncio.gather(*(s.start() for s in schedulers))
    try:

        def slots(worker: str, node: str | None) -> int:
            return len({r.slot for r in runs if r.worker == worker and r.node == node})

        await wait_for(
            lambda: all(slots("beat", n) >= 6 for n in NODES) and slots("solo", None) >= 6,
            within=30,
        )
        info = {w.name: w for w in schedulers[2].workers()}
        assert (info["beat"].scope, info["beat"].node) == (Scope.NODE, "node-b")
        assert (info["solo"].scope, info["solo"].node) == (Scope.CLUSTER, None)
    finally:
        await asyncio.gather(*(s.stop(grace=timedelta(seconds=1)) for s in schedulers))

    beats = [r for r in runs if r.worker == "beat"]
    # Exactly one run per (node, slot), on a process of that node.
    per_slot = Counter((r.node, r.slot) for r in beats)
    assert {n for n, _ in per_slot} == set(NODES)
    assert [k for k, c in per_slot.items() if c > 1] == []
    assert all(r.process.startswith(f"{r.node}-") for r in beats)
    # Never two runs at once on one node (they may overlap across nodes).
    for node in NODES:
        mine = sorted((r for r in beats if r.node == node), key=lambda r: r.began)
        overlaps = [(a, b) for a, b in itertools.pairwise(mine) if b.began < a.ended]
        assert overlaps == [], f"overlapping runs on {node}: {overlaps}"
    # The cluster-scoped worker beside it still runs once per slot in all.
    solo = Counter(r.slot for r in runs if r.worker == "solo")
    assert [s for s, c in solo.items() if c > 1] == []
    assert {r.node for r in runs if r.worker == "solo"} == {None}
    await _assert_no_slot_lost_per_node(store, beats)


async def _assert_no_slot_lost_per_node(store: Store, beats: list[_Run]) -> None:
    """Between a node's first and last run, each slot ran or was coalesced
    (a loaded machine may fall behind a 0.3 s interval), never both."""
    records = await store.runs.list(worker="beat", limit=10_000)
    skipped: dict[str, set[int]] = defaultdict(set)
    for r in records:
        if r.outcome is Outcome.SKIPPED and r.trigger_ref is not None:
            _, node, slot = r.trigger_ref.split("/")
            skipped[node].add(int(slot))
    for node in NODES:
        ran = {r.slot for r in beats if r.node == node}
        assert not skipped[node] & ran
        lost = set(range(min(ran), max(ran) + 1)) - ran - skipped[node]
        assert not lost, f"{node} lost slots {sorted(lost)}"


def _process_of_node(
    nats_server: ServerInfo, subjects: Subjects, node: str, process: str, log: Path
) -> subprocess.Popen[bytes]:
    """A process of ``node`` running :class:`Hold` alone, in an OS process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.scope_workers", subjects.prefix, node, process, str(log)],
        env=env_for(SCOPE_NATS_URL=nats_server.client_url),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_tick_held_by_a_dead_process_goes_to_its_nodes_other_process(
    nats_server: ServerInfo, subjects: Subjects, buses: list[Bus], tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    child = _process_of_node(nats_server, subjects, "node-a", "a-dies", log)
    schedulers: list[Scheduler] = []
    try:
        # The child takes node-a's tick of the current slot and holds its run.
        await wait_for(lambda: len(runs_of(log)) == 1 or child.poll() is not None, within=60)
        assert child.poll() is None, "the node-a process exited before it ran"
        (held,) = runs_of(log)
        assert (held["process"], held["node"], held["attempt"]) == ("a-dies", "node-a", 1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)

        workers = {}
        for process, node, bus in (
            ("a-lives", "node-a", buses[0]),
            ("b-1", "node-b", buses[1]),
            ("b-2", "node-b", buses[2]),
        ):
            s = Scheduler(bus, process=process, node=node)
            workers[process] = Hold(log, process)
            s.register(workers[process])
            schedulers.append(s)
        await asyncio.gather(*(s.start() for s in schedulers))
        # Within ack_wait (the run's 8 s timeout) of the kill, and a margin.
        async with asyncio.timeout(30):
            await workers["a-lives"].ran.wait()
        await wait_for(lambda: any(r["node"] == "node-b" for r in runs_of(log)), within=30)
        # Room for a wrong second delivery to show.
        await asyncio.sleep(1)
    finally:
        await asyncio.gather(*(s.stop(grace=timedelta(seconds=1)) for s in schedulers))
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)

    runs = runs_of(log)
    # The dead process's slot ran again on the other process of its node,
    # as a redelivery of the same tick, and nowhere else.
    held_runs = [r for r in runs if (r["node"], r["slot"]) == ("node-a", held["slot"])]
    assert [(r["process"], r["attempt"]) for r in held_runs] == [("a-dies", 1), ("a-lives", 2)]
    # Every other (node, slot) ran once (one, unless an hour's slot boundary
    # fell inside the test), on a process of its own node.
    others = Counter((r["node"], r["slot"]) for r in runs if r not in held_runs)
    assert set(others.values()) == {1}
    home = {"a-dies": "node-a", "a-lives": "node-a", "b-1": "node-b", "b-2": "node-b"}
    assert all(home[str(r["process"])] == r["node"] for r in runs)
    assert any(r["node"] == "node-b" for r in runs)


class NodeEvents:
    """A node-scoped event worker: each node handles every event once."""

    name = "node-events"
    interval = timedelta(0)
    subscriptions = ("thing.*",)
    scope = "node"

    def __init__(self, node: str, seen: list[tuple[str, str]]) -> None:
        self._node = node
        self._seen = seen

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self._seen.append((self._node, ctx.event.id))


async def test_a_node_scoped_event_worker_handles_each_event_once_per_node(
    buses: list[Bus],
) -> None:
    seen: list[tuple[str, str]] = []
    schedulers = []
    for i, bus in enumerate(buses):
        node = NODES[i // 2]
        s = Scheduler(bus, process=f"{node}-p{i % 2}", node=node)
        s.register(NodeEvents(node, seen))
        schedulers.append(s)
    await asyncio.gather(*(s.start() for s in schedulers))
    try:
        events = [Event(type="thing.happened", source="test") for _ in range(20)]
        await buses[0].publish_events(events)
        await wait_for(lambda: len(seen) >= 40, within=30)
        await asyncio.sleep(0.5)  # room for a wrong extra delivery to show
    finally:
        await asyncio.gather(*(s.stop(grace=timedelta(seconds=1)) for s in schedulers))
    assert Counter(seen) == Counter((n, e.id) for n in NODES for e in events)


async def test_a_node_scoped_worker_needs_the_node_of_its_process(bus: Bus) -> None:
    scheduler = Scheduler(bus, process="p")
    scheduler.register(Hold(Path(os.devnull), "p"))
    with pytest.raises(SchedulerStateError, match=r"need this process's node: Scheduler\(node="):
        await scheduler.start()


def test_a_node_name_must_be_a_subject_token() -> None:
    with pytest.raises(ValueError, match=r"'Node\.A' is not a node name"):
        Scheduler(node="Node.A")
    with pytest.raises(ValueError, match="'a b' is not a node name"):
        Scheduler().use(Bus(Subjects("x")), node="a b")
