"""PostgreSQL store throughput: batched writes through our Store against raw asyncpg executemany.

What is measured
    Two kinds of rows, each written by two paths into the same PostgreSQL
    database on the same server, in the same run:

    * health results (M, default 100,000): ours is
      ``HealthStore.record(results, [])`` then ``Store.flush()``, as
      ``HealthRunner`` writes a sweep's results (plain INSERTs, which our
      PostgreSQL backend sends by ``COPY``); raw is
      one asyncpg connection, ``executemany`` of the same INSERT in one
      transaction. For reference, raw ``copy_records_to_table`` of the same
      rows is measured too (our backend sends a batch of plain INSERTs by
      COPY: the ratio's baseline is executemany, as the issue asks).
    * worker runs (R, default 50,000): ours is ``RunStore.record_row`` then
      ``Store.flush()``, as the actors record runs (an upsert: ``ON CONFLICT
      (id) DO UPDATE``, which our backend sends with ``executemany``, since
      PostgreSQL refuses one statement that updates a row twice); raw is
      ``executemany`` of the same upsert in one transaction.

    Both clocks include turning the records into rows. Rows go in chunks of
    the writer's ``max_pending`` (100,000): one flush, one transaction, per
    chunk on either path. The tables are emptied (TRUNCATE) before each
    path; rounds alternate which path goes first; the medians are reported.
    ratio = ours rows/s / raw rows/s. Goal (issue 11): >= 0.8 for results.

The server is Debian's PostgreSQL, started in a temporary folder on
127.0.0.1 and an ephemeral port by ``tests/postgres.py`` (as the
``postgres`` user when run as root) with its default durability settings,
and stopped at the end; ``--url`` uses a database of your own instead (its
tables are emptied).

Run::

    python bench/store_pg.py            # 100,000 results, 50,000 runs, 5 rounds
    python bench/store_pg.py --quick    # 10,000 results, 5,000 runs, 1 round
    python bench/store_pg.py --check    # exit 1 when a goal is missed

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.health_sweep import make_results, result_row
from ctrlplane.store import Store
from ctrlplane.store.health import CheckResult
from ctrlplane.store.sql import numbered
from tests.postgres import PostgresServer

GOAL = 0.8
CHUNK = 100_000
"""The writer's max_pending: rows per flush, per transaction, on both paths."""
# The statements the store queues (store/health.py, store/runs.py).
INSERT_RESULT = (
    "INSERT INTO health_results "
    "(instance_id, check_name, time, outcome, status, latency_ms, message) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_RUN_COLUMNS = (
    "id, worker, process, trigger, trigger_ref, attempt, started, finished, outcome, error"
)
UPSERT_RUN = (
    f"INSERT INTO worker_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _RUN_COLUMNS.split(", ") if c != "id")
)

Run = tuple[str, str, str, str, str, int, float, float, str, None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=int, default=100_000, help="health results per path")
    parser.add_argument("--runs", type=int, default=50_000, help="worker runs per path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a PostgreSQL database to use instead of a temporary server")
    parser.add_argument("--quick", action="store_true", help="10,000 results, 5,000 runs, 1 round")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.results, args.runs, args.rounds = 10_000, 5_000, 1
    return args


def make_runs(n: int) -> list[Run]:
    now = time.time()
    return [
        (
            uuid.uuid4().hex,
            f"w{i % 50}",
            "bench:1",
            "tick",
            f"w/{i}",
            1,
            now,
            now + 0.005,
            "ok",
            None,
        )
        for i in range(n)
    ]


async def ours_results(store: Store, results: list[CheckResult]) -> float:
    started = time.perf_counter()
    for i in range(0, len(results), CHUNK):
        store.health.record(results[i : i + CHUNK], [])
        await store.flush()
    return time.perf_counter() - started


async def raw_results(conn: asyncpg.Connection, results: list[CheckResult]) -> float:
    sql = numbered(INSERT_RESULT)
    started = time.perf_counter()
    for i in range(0, len(results), CHUNK):
        rows = [result_row(r) for r in results[i : i + CHUNK]]
        async with conn.transaction():
            await conn.executemany(sql, rows)
    return time.perf_counter() - started


async def raw_copy_results(conn: asyncpg.Connection, results: list[CheckResult]) -> float:
    columns = ["instance_id", "check_name", "time", "outcome", "status", "latency_ms", "message"]
    started = time.perf_counter()
    for i in range(0, len(results), CHUNK):
        rows = [result_row(r) for r in results[i : i + CHUNK]]
        async with conn.transaction():
            await conn.copy_records_to_table("health_results", records=rows, columns=columns)
    return time.perf_counter() - started


async def ours_runs(store: Store, runs: list[Run]) -> float:
    started = time.perf_counter()
    for i in range(0, len(runs), CHUNK):
        for r in runs[i : i + CHUNK]:
            store.runs.record_row(*r)
        await store.flush()
    return time.perf_counter() - started


async def raw_runs(conn: asyncpg.Connection, runs: list[Run]) -> float:
    sql = numbered(UPSERT_RUN)
    started = time.perf_counter()
    for i in range(0, len(runs), CHUNK):
        rows = list(runs[i : i + CHUNK])
        async with conn.transaction():
            await conn.executemany(sql, rows)
    return time.perf_counter() - started


async def measure(url: str, args: argparse.Namespace) -> dict[str, object]:
    results = make_results(args.results)
    runs = make_runs(args.runs)
    store = await Store(url, flush_interval=timedelta(seconds=3600)).open()
    conn = await asyncpg.connect(url)
    figures: dict[str, dict[str, list[float]]] = {
        "results": {"ours": [], "raw": [], "raw_copy": []},
        "runs": {"ours": [], "raw": []},
    }
    paths: dict[str, dict[str, Callable[[], Awaitable[float]]]] = {
        "results": {
            "ours": lambda: ours_results(store, results),
            "raw": lambda: raw_results(conn, results),
            "raw_copy": lambda: raw_copy_results(conn, results),
        },
        "runs": {"ours": lambda: ours_runs(store, runs), "raw": lambda: raw_runs(conn, runs)},
    }
    counts = {"results": (args.results, "health_results"), "runs": (args.runs, "worker_runs")}
    try:
        # Warm up both paths (prepared statements, pool, caches); not measured.
        await paths["results"]["ours"]()
        await paths["results"]["raw"]()
        for r in range(args.rounds):
            for kind in ("results", "runs"):
                order = list(paths[kind]) if r % 2 == 0 else list(reversed(paths[kind]))
                n, table = counts[kind]
                for path in order:
                    await conn.execute("TRUNCATE health_results, worker_runs")
                    seconds = await paths[kind][path]()
                    written = await conn.fetchval(f"SELECT COUNT(*) FROM {table}")
                    if written != n or store.writer.dropped:
                        raise RuntimeError(f"{kind} {path}: {written} rows of {n}")
                    figures[kind][path].append(n / seconds)
                    print(f"round {r + 1} {kind:7} {path:8}: {n / seconds:>10,.0f} rows/s")
    finally:
        await conn.close()
        await store.close()
    out: dict[str, object] = {}
    for kind, by_path in figures.items():
        ours, raw = statistics.median(by_path["ours"]), statistics.median(by_path["raw"])
        out[kind] = {
            f"{path}_rows_per_s": round(statistics.median(v)) for path, v in by_path.items()
        }
        out[f"{kind}_ratio"] = round(ours / raw, 3)
    return out


async def bench(args: argparse.Namespace) -> dict[str, object]:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.url:
        return await measure(args.url, args)
    server = PostgresServer()
    try:
        await server.start()
        name = await server.create_database()
        return await measure(server.url(name), args)
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(bench(args))
    for kind in ("results", "runs"):
        figures = report[kind]
        assert isinstance(figures, dict)
        print(
            f"{kind:7}: ours {figures['ours_rows_per_s']:>10,} rows/s, "
            f"raw executemany {figures['raw_rows_per_s']:>10,} rows/s, "
            f"ratio {report[f'{kind}_ratio']}"
        )
    copied = report["results"]
    assert isinstance(copied, dict)
    print(f"(results by raw COPY, for reference: {copied['raw_copy_rows_per_s']:,} rows/s)")
    report.update(
        {
            "rows": {"results": args.results, "runs": args.runs},
            "rounds": args.rounds,
            "goal_results_ratio": GOAL,
        }
    )
    print(json.dumps(report))
    ratio = report["results_ratio"]
    assert isinstance(ratio, float)
    if args.check and ratio < GOAL:
        print(f"goal missed: results ratio {ratio} < {GOAL}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
