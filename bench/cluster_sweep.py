"""Sharded health sweeps: one replica against two, each sweeping its node's shard.

What is measured
    N HTTP checks (default 20,000: N / 10 instances with 10 ``http`` checks
    each) against a tiny aiohttp server in another OS process (the target of
    ``bench/health_sweep.py``: GET / answers 200 "ok"), swept by R replica OS
    processes (R = 1, then 2, in the same run) that share one store: a SQLite
    file in a temporary directory (WAL, busy timeout), as replicas on one host
    do. Each replica is a node of its own (``node-0``, ``node-1``) and runs a
    ``HealthRunner(store, {"http": HttpChecker(max_connections=C,
    max_per_host=C)}, concurrency=C, nodes=...)`` whose node view lists the R
    nodes as live, so its sweep covers its shard
    (``ctrlplane.cluster.shards.shard``; the instances are placed on no node,
    so they are spread by rendezvous hash).

    The parent tells every replica to sweep at once (a line on its stdin)
    and takes the time from just before that until the last replica has
    finished ``sweep()`` and ``Store.flush()``: every result of the sweep
    committed. Linux's monotonic clock is system-wide, so the replicas'
    finishing times and the parent's start are on one clock. The first sweep
    turns every check unknown -> healthy (N state changes written too; its
    events are not published here); the next ``--sweeps`` (default 3) change
    nothing and are the steady figure (their median). After each sweep the
    parent checks that the store holds exactly N more results and that the
    replicas' checks add up to N (each check ran once).

    Each round starts the replicas afresh on a fresh store and alternates
    which set goes first; medians over rounds are reported.
    ratio = time with 1 replica / time with 2. Goal (issue 11): >= 1.5.

Run::

    python bench/cluster_sweep.py            # 20,000 checks, 3 steady sweeps, 3 rounds
    python bench/cluster_sweep.py --quick    # 2,000 checks, 2 steady sweeps, 1 round
    python bench/cluster_sweep.py --check    # exit 1 when the goal is missed

The last line printed is a JSON object with every figure. Every child
process (replicas, target) stops when its stdin closes, dies with the parent
(Linux), and is terminated, then killed, in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.health_sweep import (
    _die_with_parent,
    populate,
    process_cpu_s,
    quiet_logs,
    start_server,
    start_target,
    stop_target,
)
from ctrlplane.checks import HttpChecker
from ctrlplane.cluster.shards import shard
from ctrlplane.store import Store
from ctrlplane.workers.health_runner import HealthRunner
from tests.helpers import FixedNodes

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

SCRIPT = Path(__file__).resolve()
GOAL = 1.5
READY_S = 60.0
SWEEP_S = 300.0


@dataclass
class Sweep:
    """One sweep of all N checks by R replicas."""

    replicas: int
    first: bool
    seconds: float
    """From the parent's command to the last replica's committed flush."""
    per_replica_s: list[float]
    """Each replica's own sweep + flush."""
    per_replica_checks: list[int]
    cpu_s: list[float]
    """Each replica's CPU time for the sweep."""


# ------------------------------------------------------------ lean target

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _LeanHttp(asyncio.Protocol):
    """Answers every GET on a keep-alive connection with 200 "ok", nothing else.

    Only for the benchmark's target: the checker under test is aiohttp's
    client; what answers it should cost as little CPU as it can, because on
    this 2-core machine the target shares the cores with the replicas (in a
    cluster the targets are elsewhere). Requests have no body (GET), so a
    request ends at its blank line.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        requests = self._buffer.count(b"\r\n\r\n")
        if requests:
            self._buffer = self._buffer[self._buffer.rindex(b"\r\n\r\n") + 4 :]
            self._transport.write(_OK * requests)


async def serve_lean() -> int:
    """The lean target: prints ``PORT n``, serves until stdin closes."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_LeanHttp, "127.0.0.1", 0)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await stdin.read()
    finally:
        server.close()
    return 0


async def start_lean_target() -> tuple[asyncio.subprocess.Process, int]:
    return await start_server(SCRIPT, "--serve-lean", READY_S)


# ----------------------------------------------------------------- replica


async def replica(store_path: str, node: str, nodes: list[str], concurrency: int) -> int:
    """A replica: sweeps its shard on each ``sweep`` line of stdin, answers
    ``DONE {json}``; stops when stdin closes."""
    quiet_logs()
    store = Store(store_path)
    await store.open()
    checker = HttpChecker(max_connections=concurrency, max_per_host=concurrency)
    runner = HealthRunner(
        store, {"http": checker}, concurrency=concurrency, nodes=FixedNodes(node, nodes)
    )
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        print("READY", flush=True)
        while (await stdin.readline()).strip() == b"sweep":
            cpu0 = time.process_time()
            started = time.monotonic()
            await runner.sweep()
            # A sweep that changed nothing leaves its results to the writer's
            # next round: the measure is "every result committed".
            await store.flush()
            ended = time.monotonic()
            # Which instances were this replica's (outside the clock).
            mine = shard(await store.instances.all(), node, nodes)
            done = {
                "started": started,
                "ended": ended,
                "instances": len(mine),
                "cpu": time.process_time() - cpu0,
            }
            print("DONE " + json.dumps(done), flush=True)
    finally:
        await checker.close()
        await store.close()
    return 0


# ------------------------------------------------------------------ parent


class Replicas:
    """R replica processes on one store, driven through their stdin."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, store_path: str, count: int, concurrency: int) -> None:
        nodes = [f"node-{k}" for k in range(count)]
        for node in nodes:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                "--replica",
                str(store_path),
                node,
                ",".join(nodes),
                str(concurrency),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            async with asyncio.timeout(READY_S):
                line = await proc.stdout.readline()
            if line.strip() != b"READY":
                raise RuntimeError(f"replica did not start: {line!r}")

    async def sweep(self) -> tuple[float, list[dict[str, float]]]:
        """All replicas sweep at once; the parent's start and their answers."""
        started = time.monotonic()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"sweep\n")
        for proc in self.procs:
            assert proc.stdin is not None
            await proc.stdin.drain()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            async with asyncio.timeout(SWEEP_S):
                line = await proc.stdout.readline()
            if not line.startswith(b"DONE "):
                raise RuntimeError(f"replica failed its sweep: {line!r}")
            answers.append(json.loads(line[5:]))
        return started, answers

    async def stop(self) -> None:
        for proc in self.procs:
            await stop_target(proc)  # close stdin, wait, terminate, kill
        self.procs.clear()


async def _results(store: Store) -> int:
    row = await store.db.fetchone("SELECT COUNT(*) FROM health_results")
    return int(row[0]) if row else 0


class Stores:
    """Where each measurement's store is: a fresh SQLite file, a fresh
    database on a temporary PostgreSQL server, or a PostgreSQL database of
    the caller's (emptied before each measurement)."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self._kind = "url" if args.store_url else args.store
        self._url = args.store_url
        self._tmp = tmp
        self._server: PostgresServer | None = None

    async def __aenter__(self) -> Stores:
        if self._kind == "postgresql":
            from tests.postgres import PostgresServer

            self._server = PostgresServer()
            await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop()

    async def fresh(self, tag: str) -> str:
        if self._server is not None:
            return self._server.url(await self._server.create_database())
        if self._url:
            async with Store(self._url) as store:
                for table in ("health_results", "health_checks", "instances"):
                    await store.db.execute(f"DELETE FROM {table}")
            return str(self._url)
        return str(self._tmp / f"{tag}.db")


async def measure(
    replicas: int, args: argparse.Namespace, url: str, stores: Stores, tag: str
) -> list[Sweep]:
    """A fresh store of N checks swept 1 + ``args.sweeps`` times by ``replicas`` replicas."""
    store_path = await stores.fresh(f"{tag}-{replicas}")
    async with Store(store_path) as store:
        await populate(store, args.checks, args.per_instance, url)
    instances = -(-args.checks // args.per_instance)
    group = Replicas()
    sweeps: list[Sweep] = []
    counter = Store(store_path)
    await counter.open()
    try:
        await group.start(store_path, replicas, args.concurrency)
        for k in range(1 + args.sweeps):
            before = await _results(counter)
            started, answers = await group.sweep()
            ended = max(a["ended"] for a in answers)
            after = await _results(counter)
            shards = [int(a["instances"]) for a in answers]
            if after - before != args.checks or sum(shards) != instances:
                raise RuntimeError(
                    f"{replicas} replicas: {after - before} results written "
                    f"(expected {args.checks}), shards of {shards} instances "
                    f"(expected {instances} in all)"
                )
            sweeps.append(
                Sweep(
                    replicas=replicas,
                    first=k == 0,
                    seconds=ended - started,
                    per_replica_s=[a["ended"] - a["started"] for a in answers],
                    per_replica_checks=[s * args.per_instance for s in shards],
                    cpu_s=[a["cpu"] for a in answers],
                )
            )
    finally:
        await group.stop()
        await counter.close()
    return sweeps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--checks", type=int, default=20_000, help="HTTP checks in all")
    parser.add_argument("--per-instance", type=int, default=10, help="checks per instance")
    parser.add_argument("--concurrency", type=int, default=64, help="checks in flight per replica")
    parser.add_argument("--sweeps", type=int, default=3, help="steady sweeps after the first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="2,000 checks, 2 sweeps, 1 round")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the ratio < {GOAL}")
    parser.add_argument(
        "--target",
        choices=("lean", "aiohttp"),
        default="lean",
        help="what answers the checks: a minimal asyncio responder (default), or "
        "bench/health_sweep.py's aiohttp server",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the shared store: a SQLite file (default), or a database on a temporary "
        "PostgreSQL server (tests/postgres.py)",
    )
    parser.add_argument(
        "--store-url",
        help="a PostgreSQL database of your own (postgresql://...) instead; its instances, "
        "checks and results are deleted before each measurement",
    )
    parser.add_argument("--serve-lean", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replica", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.checks, args.sweeps, args.rounds = 2_000, 2, 1
    if args.checks < 1 or args.per_instance < 1 or args.sweeps < 1 or args.rounds < 1:
        parser.error("--checks, --per-instance, --sweeps and --rounds must be at least 1")
    return args


async def bench(args: argparse.Namespace) -> int:
    quiet_logs()
    target, port = await (start_lean_target() if args.target == "lean" else start_target())
    url = f"http://127.0.0.1:{port}/"
    runs: dict[int, list[Sweep]] = {1: [], 2: []}
    round_ratios: list[float] = []
    load_before = os.getloadavg()
    server_cpu0 = process_cpu_s(target.pid)
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-sweep-") as tmp:
            async with Stores(args, Path(tmp)) as stores:
                for r in range(args.rounds):
                    order = (1, 2) if r % 2 == 0 else (2, 1)
                    steady: dict[int, float] = {}
                    for replicas in order:
                        sweeps = await measure(replicas, args, url, stores, f"r{r}")
                        runs[replicas] += sweeps
                        steady[replicas] = statistics.median(
                            s.seconds for s in sweeps if not s.first
                        )
                        print(
                            f"round {r + 1}: {replicas} replica(s): first sweep "
                            f"{sweeps[0].seconds:.2f} s, steady {steady[replicas]:.2f} s "
                            f"(shards {sweeps[-1].per_replica_checks})",
                            flush=True,
                        )
                    # Back to back, so other load on the machine hits both alike.
                    round_ratios.append(steady[1] / steady[2])
    finally:
        server_cpu = process_cpu_s(target.pid)
        await stop_target(target)

    def median(replicas: int, first: bool) -> float:
        return statistics.median(s.seconds for s in runs[replicas] if s.first is first)

    steady1, steady2 = median(1, False), median(2, False)
    first1, first2 = median(1, True), median(2, True)
    ratio, first_ratio = steady1 / steady2, first1 / first2
    round_ratio = statistics.median(round_ratios)
    load_after = os.getloadavg()
    n = args.checks
    print()
    print(
        f"{n:,} HTTP checks, concurrency {args.concurrency} per replica, "
        f"{args.target} target, {os.cpu_count()} cores"
    )
    print(
        f"  1 replica : steady sweep {steady1:.2f} s ({n / steady1:,.0f} checks/s), "
        f"first {first1:.2f} s"
    )
    print(
        f"  2 replicas: steady sweep {steady2:.2f} s ({n / steady2:,.0f} checks/s), "
        f"first {first2:.2f} s"
    )
    print(
        f"  ratio (1 replica / 2 replicas): steady {ratio:.2f}, first {first_ratio:.2f} "
        f"(goal >= {GOAL}: {'met' if ratio >= GOAL else 'missed'})"
    )
    print(f"  per round: {', '.join(f'{x:.2f}' for x in round_ratios)} (median {round_ratio:.2f})")
    print(
        f"  load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}: "
        "other work on the cores slows the 2-replica set most"
    )
    cpu = {
        k: statistics.median(sum(s.cpu_s) / n * 1e6 for s in v if not s.first)
        for k, v in runs.items()
    }
    print(f"  replica CPU per check (steady, all replicas): 1: {cpu[1]:.0f} us, 2: {cpu[2]:.0f} us")
    # What the wall-clock ratio would be with a core per replica and a free
    # target: how evenly the work divides, whatever else the machine runs.
    division = statistics.median(sum(s.cpu_s) for s in runs[1] if not s.first) / statistics.median(
        max(s.cpu_s) for s in runs[2] if not s.first
    )
    print(f"  work division (1 replica's CPU / the busiest of 2's): {division:.2f}")
    if server_cpu is not None and server_cpu0 is not None:
        total = sum(len(v) for v in runs.values()) * n
        print(f"  target server CPU per request: {(server_cpu - server_cpu0) / total * 1e6:.0f} us")
    print(
        json.dumps(
            {
                "bench": "cluster_sweep",
                "checks": n,
                "concurrency": args.concurrency,
                "target": args.target,
                "store": "url" if args.store_url else args.store,
                "rounds": args.rounds,
                "sweeps": args.sweeps,
                "steady_s": {"1": steady1, "2": steady2},
                "first_s": {"1": first1, "2": first2},
                "ratio": ratio,
                "first_ratio": first_ratio,
                "round_ratios": round_ratios,
                "load_before": load_before[0],
                "load_after": load_after[0],
                "goal": GOAL,
                "cpu_us_per_check": cpu,
                "work_division": division,
                "python": platform.python_version(),
                "runs": {str(k): [asdict(s) for s in v] for k, v in runs.items()},
            }
        )
    )
    return 1 if args.check and ratio < GOAL else 0


def main() -> int:
    args = parse_args()
    if args.serve_lean:
        return asyncio.run(serve_lean())
    if args.replica:
        store_path, node, nodes, concurrency = args.replica
        return asyncio.run(replica(store_path, node, nodes.split(","), int(concurrency)))
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
