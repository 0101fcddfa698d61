"""GC pressure: a writer's latency while the GarbageCollector deletes 1,000,000 health results.

What is measured
    The latency of a writer that stores one health check result every 10 ms
    through the real path of the HealthRunner, ``HealthStore.record`` then
    ``Store.flush()`` (which returns once the row is committed), on a real
    SQLite ``Store`` in a temporary directory, in three phases of one run:

    * gc: while ``GarbageCollector.collect()`` (default batch size 1,000 and
      pause 10 ms, as ``Config`` has them) deletes the expired results;
    * no GC: the same writer for as long as the gc phase lasted, on a copy
      of the same file, with nothing else running;
    * naive: while one ``DELETE`` statement (a window function picking every
      result beyond the newest N of each check) deletes the same rows, in a
      transaction on the same writer lock, as a GC without batches would.

    Every phase starts from a byte-identical copy of one seeded file:
    ``--checks`` checks (default 100) of one instance each with
    ``--limit`` results to keep (default 1,000, ``health_history_limit``'s
    default) plus their share of ``--rows`` expired results (default
    1,000,000), written with plain ``sqlite3`` ``executemany`` before
    anything is measured.

    The writer is open-loop: write k is due at ``t0 + k * 10 ms`` and is
    started then whether or not write k-1 has finished, and its latency is
    counted from when it was due. A writer blocked for a second thus shows
    a hundred slow writes, not one (no coordinated omission). Its check is
    one of its own, so GC never deletes what it writes. Latencies are of the
    writes due while the deletion ran (gc, naive) or during the whole phase
    (no GC); p50 and p99 are nearest-rank.

Goal (from the issue): writer p99 <= 15 ms with GC running.

Run::

    python bench/gc_pressure.py            # 1,000,000 expired results (~2 min)
    python bench/gc_pressure.py --quick    # 100,000 (~20 s)
    python bench/gc_pressure.py --rows 500000 --batch-size 500 --check

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from ctrlplane.store import Store
from ctrlplane.store.health import CheckResult, HealthStatus, Outcome
from ctrlplane.workers.gc import GarbageCollector

GOAL_P99_MS = 15.0
# Sorts before the seeded instances, so GC looks at the writer's check first,
# when it holds far fewer than ``--limit`` results: GC deletes none of them.
WRITER_INSTANCE = "a-writer"
NAIVE_DELETE = (
    "DELETE FROM health_results WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
    "(PARTITION BY instance_id, check_name ORDER BY time DESC, id DESC) AS n "
    "FROM health_results) WHERE n > ?)"
)


@dataclass
class Latency:
    """A writer's latencies over one window, in milliseconds."""

    writes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass
class Phase:
    """One phase: how long its deletion (or idle window) took, and the writer's figures."""

    phase: str
    seconds: float
    deleted: int
    statements: int
    writer: Latency


# ---------------------------------------------------------------- helpers


def quiet_logs() -> None:
    """Log warnings and errors only, to stderr, as the CLI does in production."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency(samples: list[float]) -> Latency:
    ordered = sorted(samples)
    return Latency(
        writes=len(ordered),
        p50_ms=percentile(ordered, 50),
        p99_ms=percentile(ordered, 99),
        max_ms=ordered[-1] if ordered else math.nan,
        mean_ms=sum(ordered) / len(ordered) if ordered else math.nan,
    )


async def create_schema(path: Path) -> None:
    """An empty file at the current schema, made by opening a ``Store`` once."""
    store = Store(path)
    await store.open()
    await store.close()


def seed(path: Path, rows: int, checks: int, keep: int) -> int:
    """Seed ``checks`` checks with ``keep`` results each plus ``rows`` older ones between them.

    Plain sqlite3 executemany in one transaction; not measured. Returns the
    number of rows written.
    """
    per_check = rows // checks + keep
    now = time.time()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        written = 0
        with conn:
            for c in range(checks):
                instance = f"i-{c:04d}"
                conn.executemany(
                    "INSERT INTO health_results "
                    "(instance_id, check_name, time, outcome, status, latency_ms, message) "
                    "VALUES (?, 'http', ?, 'pass', 'healthy', 1.5, '200 OK')",
                    # Oldest first, one every 30 s up to now, as a sweep would leave them.
                    ((instance, now - 30.0 * (per_check - i)) for i in range(per_check)),
                )
                written += per_check
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return written


def fresh_copy(template: Path, folder: Path) -> Path:
    folder.mkdir()
    copy = folder / template.name
    shutil.copyfile(template, copy)
    return copy


class Writer:
    """Stores one result every ``period`` through ``HealthStore.record`` and ``flush``."""

    def __init__(self, store: Store, period: float) -> None:
        self._store = store
        self._period = period
        # (due, latency ms) of each finished write
        self.samples: list[tuple[float, float]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while self._running:
            due = start + k * self._period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._write(due, k))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            k += 1

    async def _write(self, due: float, k: int) -> None:
        loop = asyncio.get_running_loop()
        self._store.health.record(
            [
                CheckResult(
                    instance_id=WRITER_INSTANCE,
                    check="http",
                    time=datetime.now(UTC),
                    outcome=Outcome.PASS,
                    status=HealthStatus.HEALTHY,
                    latency=timedelta(milliseconds=1.5),
                    message=f"write {k}",
                )
            ],
            [],
        )
        await self._store.flush()
        self.samples.append((due, (loop.time() - due) * 1000))

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*list(self._tasks))

    def between(self, t0: float, t1: float) -> list[float]:
        return [ms for due, ms in self.samples if t0 <= due < t1]


async def count_results(store: Store) -> int:
    row = await store.db.fetchone("SELECT COUNT(*) FROM health_results")
    return int(row[0]) if row else 0


# ----------------------------------------------------------------- phases

Deletion = Callable[[Store], Awaitable[tuple[int, int]]]


async def phase(
    name: str,
    db_path: Path,
    args: argparse.Namespace,
    deletion: Deletion | None,
    idle_seconds: float = 0.0,
) -> Phase:
    """Open a store on ``db_path``, start the writer, run ``deletion`` (or idle), measure."""
    store = Store(db_path)
    await store.open()
    try:
        before = await count_results(store)
        writer = Writer(store, args.period_ms / 1000)
        writing = asyncio.create_task(writer.run())
        loop = asyncio.get_running_loop()
        await asyncio.sleep(args.warmup)
        t0 = loop.time()
        deleted = statements = 0
        if deletion is None:
            await asyncio.sleep(idle_seconds)
        else:
            deleted, statements = await deletion(store)
        t1 = loop.time()
        await asyncio.sleep(args.warmup)
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        await writer.stop()
        after = await count_results(store)
        if deletion is not None and before + len(writer.samples) - after != deleted:
            raise RuntimeError(
                f"{name}: {before} rows + {len(writer.samples)} written - {after} left "
                f"!= {deleted} deleted"
            )
        return Phase(
            phase=name,
            seconds=t1 - t0,
            deleted=deleted,
            statements=statements,
            writer=latency(writer.between(t0, t1)),
        )
    finally:
        await store.close()


def gc_deletion(args: argparse.Namespace) -> Deletion:
    async def run(store: Store) -> tuple[int, int]:
        gc = GarbageCollector(
            store,
            health_history_limit=args.limit,
            batch_size=args.batch_size,
            batch_pause=timedelta(milliseconds=args.batch_pause_ms),
        )
        report = await gc.collect()
        if report.failed:
            raise RuntimeError(f"gc failed: {report.failed}")
        return sum(report.deleted.values()), report.batches

    return run


def naive_deletion(args: argparse.Namespace) -> Deletion:
    async def run(store: Store) -> tuple[int, int]:
        async with store.writer.transaction() as db:
            return await db.execute(NAIVE_DELETE, (args.limit,)), 1

    return run


def show(p: Phase) -> None:
    w = p.writer
    what = (
        f"deleted {p.deleted:,} rows in {p.seconds:.1f} s ({p.statements:,} statements)"
        if p.statements
        else f"{p.seconds:.1f} s idle"
    )
    print(
        f"  {p.phase:<6} {what}: writer {w.writes:,} writes, p50 {w.p50_ms:.1f} ms, "
        f"p99 {w.p99_ms:.1f} ms, max {w.max_ms:.1f} ms",
        flush=True,
    )


# ------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, object]:
    # SIGTERM cancels the run, so the temporary directory is removed on the way out.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-") as tmp:
        template = Path(tmp) / "template" / "ctrlplane.db"
        template.parent.mkdir()
        await create_schema(template)
        started = time.perf_counter()
        seeded = await asyncio.to_thread(seed, template, args.rows, args.checks, args.limit)
        print(
            f"seeded {seeded:,} results ({args.checks} checks x {seeded // args.checks:,}) "
            f"in {time.perf_counter() - started:.1f} s; "
            f"file {template.stat().st_size / 1e6:.0f} MB",
            flush=True,
        )
        gc = await phase("gc", fresh_copy(template, Path(tmp) / "gc"), args, gc_deletion(args))
        show(gc)
        idle = await phase(
            "no GC", fresh_copy(template, Path(tmp) / "idle"), args, None, gc.seconds
        )
        show(idle)
        naive = None
        if not args.no_naive:
            naive = await phase(
                "naive", fresh_copy(template, Path(tmp) / "naive"), args, naive_deletion(args)
            )
            show(naive)
    expected = args.rows // args.checks * args.checks
    if gc.deleted != expected:
        raise RuntimeError(f"gc deleted {gc.deleted:,} rows, expected {expected:,}")
    summary: dict[str, object] = {
        "bench": "gc_pressure",
        "rows": expected,
        "checks": args.checks,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "batch_pause_ms": args.batch_pause_ms,
        "writer_period_ms": args.period_ms,
        "gc": asdict(gc),
        "no_gc": asdict(idle),
        "naive": asdict(naive) if naive else None,
        "gc_rows_per_s": gc.deleted / gc.seconds,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met": gc.writer.p99_ms <= GOAL_P99_MS,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
    }
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired results to delete")
    parser.add_argument("--checks", type=int, default=100, help="checks they belong to")
    parser.add_argument("--limit", type=int, default=1000, help="results kept per check")
    parser.add_argument("--batch-size", type=int, default=1000, help="GC rows per delete")
    parser.add_argument("--batch-pause-ms", type=float, default=10.0, help="GC pause")
    parser.add_argument("--period-ms", type=float, default=10.0, help="one write every ...")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before and after")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100,000 rows")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if the GC p99 > {GOAL_P99_MS} ms"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 100_000
    if min(args.rows, args.checks, args.limit, args.batch_size) < 1 or args.period_ms <= 0:
        parser.error("--rows, --checks, --limit, --batch-size and --period-ms must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    print(
        f"gc pressure: {args.rows:,} expired results over {args.checks} checks (keep "
        f"{args.limit} each), GC batches of {args.batch_size} with {args.batch_pause_ms:g} ms "
        f"pauses, one write every {args.period_ms:g} ms, {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        summary = asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; temporary files removed", file=sys.stderr)
        return 130
    gc, idle = summary["gc"], summary["no_gc"]
    assert isinstance(gc, dict) and isinstance(idle, dict)
    print(
        f"writer p99: {gc['writer']['p99_ms']:.1f} ms with GC, "
        f"{idle['writer']['p99_ms']:.1f} ms without (goal <= {GOAL_P99_MS:g} ms); "
        f"GC {summary['gc_rows_per_s']:,.0f} rows/s"
    )
    print(json.dumps(summary))
    if args.check and not summary["goal_met"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
