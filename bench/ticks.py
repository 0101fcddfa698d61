"""Tick precision and exactly-once across processes: lateness, duplicates and lost slots.

What is measured
    ``--processes`` OS processes (default 3), each with its own event loop,
    its own ``Bus`` connection and its own ``Scheduler``, all register the
    same ``--workers`` periodic workers (default 50) at ``--interval``
    (default 1 s) under one subject prefix, against one nats-server started
    here (temporary directory, 127.0.0.1, ephemeral port). Every process
    publishes every tick; JetStream keeps one per ``worker/slot`` and each
    worker's shared durable consumer hands it to exactly one process. This is
    the production set-up of several replicas, on one machine.

    Each run appends one JSON line to its process's own file: worker, slot,
    ``tick.scheduled``, the wall-clock time at which ``run`` started, the
    process and the delivery attempt. The runtime also records every run in
    ``worker_runs`` of one SQLite file shared by all the processes (as
    replicas on one host share it: WAL, busy timeout), with ``trigger_ref =
    "worker/slot"``; the analysis reads both and cross-checks them.

Window
    The children start their schedulers and report ready; once all are ready
    the parent picks a window ``[t0, t0 + seconds)`` starting one second later
    and tells every child to run until one interval and a half after its end,
    then to stop gracefully. The slots measured for lateness and loss are
    those whose scheduled start lies in the window (the slot running when a
    scheduler starts is published late by design and is left out).

Figures
    * lateness = run start - ``tick.scheduled``, over the window's runs:
      p50, p99 (nearest rank), max. Goal: p99 <= 50 ms.
    * duplicates = runs beyond the first of one ``(worker, slot)``, over every
      run seen (window or not). Goal: 0.
    * coalesced = slots of the window (or of a gap) with no run but a
      ``skipped`` row in ``worker_runs``: a stale tick the runtime coalesced
      into a newer one, as it should after an outage. Counted apart.
    * lost = slots of the window with no run, plus slots with no run between
      a worker's first and last observed slot, that were not coalesced.
      Goal: 0.

    There is no raw baseline for cluster-wide exactly-once; the goal is the
    baseline, and the ratio printed is p99 / 50 ms (<= 1 meets it).

Run::

    python bench/ticks.py                 # 3 processes x 50 workers, 1 s, 60 s
    python bench/ticks.py --quick         # the same for 10 s
    python bench/ticks.py --processes 2 --workers 100 --seconds 30 --check
    python bench/ticks.py --workers 1000 --seconds 30   # 3 processes x 1,000 workers

The last line printed is a JSON object with every figure. Children cannot
outlive the benchmark: they stop when their stdin closes, die with the parent
(Linux), and are terminated, then killed, in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.actors.spec import spec_of
from ctrlplane.bus import Bus, Subjects
from ctrlplane.bus.server import EmbeddedServer, read_server_info
from ctrlplane.store import Store

GOAL_P99_MS = 50.0
SCRIPT = Path(__file__).resolve()
READY_TIMEOUT = 180.0  # 5,000 workers create 5,000 consumers per process
STOP_SLACK = 30.0


def quiet_logs() -> None:
    """Log warnings and errors only, to stderr, as the CLI does in production."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def worker_names(count: int) -> list[str]:
    return [f"w{i:03d}" for i in range(count)]


class TickRecorder:
    """A periodic worker that appends one JSON line per run."""

    def __init__(self, name: str, interval: float, process: str, out: IO[str]) -> None:
        self.name = name
        self.interval = timedelta(seconds=interval)
        self._process = process
        self._out = out

    async def run(self, ctx: RunContext) -> None:
        start = time.time()
        tick = ctx.tick
        assert tick is not None
        record = {
            "worker": self.name,
            "slot": tick.slot,
            "scheduled": tick.scheduled.timestamp(),
            "start": start,
            "process": self._process,
            "attempt": ctx.attempt,
        }
        self._out.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------ child


async def child(args: argparse.Namespace, out: IO[str]) -> int:
    """One replica: run the scheduler until told, then stop gracefully."""
    info = read_server_info(Path(args.data_dir))
    if info is None:
        print("ERROR no nats-server found in the data directory", flush=True)
        return 2
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    bus = Bus(Subjects(args.prefix), name=f"bench-{args.name}")
    await bus.connect(info.client_url)
    store = await Store(args.store).open()
    scheduler = Scheduler(bus, runs=store.runs, process=args.name)
    for name in worker_names(args.workers):
        scheduler.register(TickRecorder(name, args.interval, args.name, out))
    try:
        started = time.monotonic()
        await scheduler.start()
        print(f"READY {time.monotonic() - started!r}", flush=True)
        line = await stdin.readline()
        if line.startswith(b"RUN "):
            until = float(line.split()[1])
            # Stop at ``until``, or at once if the parent goes away (stdin closes).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, until - time.time())):
                    await stdin.read()
    finally:
        await scheduler.stop(grace=timedelta(seconds=5))
        infos = scheduler.workers()
        await store.close()
        await bus.close()
    stats = {
        "runs": sum(i.run_count for i in infos),
        "skipped": sum(i.skipped_count for i in infos),
        "errors": sum(i.error_count for i in infos),
    }
    print("DONE " + json.dumps(stats), flush=True)
    return 0


# ----------------------------------------------------------------- parent


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark process dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _expect(proc: asyncio.subprocess.Process, word: str, limit_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + limit_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"child {proc.pid} did not say {word} within {limit_s:g}s")
        async with asyncio.timeout(remaining):
            line = (await proc.stdout.readline()).decode()
        if not line:
            raise RuntimeError(f"child {proc.pid} exited before saying {word}")
        if line.startswith(word):
            return line[len(word) :].strip()
        print(f"  child {proc.pid}: {line.rstrip()}", file=sys.stderr)


async def _reap(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in procs:
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Drive(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`drive` measured: the window, each child's stats, start-up times."""

    t0: float
    t1: float
    children: list[dict[str, Any]]
    start_s: list[float]
    """Per child: ``Scheduler.start()`` (streams, ledger, consumers, ticker)."""
    ready_s: float
    """From spawning the first child to the last one ready (interpreters included)."""


async def drive(args: argparse.Namespace, tmp: Path) -> Drive:
    """Start the server and the children, run the window; returns it and the child stats."""
    data_dir = tmp / "data"
    server = EmbeddedServer(data_dir)
    await server.start()
    procs: list[asyncio.subprocess.Process] = []
    spawned = time.monotonic()
    try:
        prefix = f"ticks{uuid.uuid4().hex[:6]}"
        for i in range(args.processes):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(SCRIPT),
                    "--child",
                    "--name",
                    f"p{i}",
                    "--data-dir",
                    str(data_dir),
                    "--store",
                    str(tmp / "runs.db"),
                    "--out",
                    str(tmp / f"p{i}.jsonl"),
                    "--prefix",
                    prefix,
                    "--workers",
                    str(args.workers),
                    "--interval",
                    str(args.interval),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    preexec_fn=_die_with_parent,
                )
            )
        ready = await asyncio.gather(*(_expect(p, "READY", READY_TIMEOUT) for p in procs))
        ready_s = time.monotonic() - spawned
        start_s = [float(r) for r in ready]
        t0 = time.time() + 1.0
        t1 = t0 + args.seconds
        until = t1 + 1.5 * args.interval
        print(f"all {len(procs)} processes ready; measuring {args.seconds:g} s", flush=True)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"RUN {until!r}\n".encode())
            await proc.stdin.drain()
        wait = until - time.time() + STOP_SLACK
        done = await asyncio.gather(*(_expect(p, "DONE", wait) for p in procs))
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            async with asyncio.timeout(10):
                code = await proc.wait()
            if code != 0:
                raise RuntimeError(f"child {proc.pid} exited with status {code}")
        return Drive(
            t0=t0, t1=t1, children=[json.loads(d) for d in done], start_s=start_s, ready_s=ready_s
        )
    finally:
        await _reap(procs)
        await server.stop()


def _cancel_on_sigterm() -> None:
    """Turn SIGTERM into cancellation, so the ``finally`` blocks reap the children."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def analyse(args: argparse.Namespace, tmp: Path, drove: Drive) -> dict[str, Any]:
    t0, t1, children = drove.t0, drove.t1, drove.children
    records: list[dict[str, Any]] = []
    for i in range(args.processes):
        path = tmp / f"p{i}.jsonl"
        if path.exists():
            with path.open(encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f if line.strip())

    runs = Counter((r["worker"], r["slot"]) for r in records)
    duplicates = sum(c - 1 for c in runs.values() if c > 1)
    first_run: dict[tuple[str, int], dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: float(r["start"])):
        first_run.setdefault((r["worker"], r["slot"]), r)

    lost_window: list[tuple[str, int]] = []
    lost_gaps: list[tuple[str, int]] = []
    lateness_ms: list[float] = []
    per_process: Counter[str] = Counter()
    seen: dict[str, set[int]] = defaultdict(set)
    for worker, slot in runs:
        seen[worker].add(slot)
    for name in worker_names(args.workers):
        spec = spec_of(TickRecorder(name, args.interval, "", sys.stdout))
        offset, interval = spec.offset.total_seconds(), spec.interval_s
        first_slot = math.ceil((t0 - offset) / interval)
        last_slot = math.ceil((t1 - offset) / interval) - 1
        for slot in range(first_slot, last_slot + 1):
            run = first_run.get((name, slot))
            if run is None:
                lost_window.append((name, slot))
                continue
            lateness_ms.append((float(run["start"]) - float(run["scheduled"])) * 1000)
            per_process[str(run["process"])] += 1
        if seen[name]:
            lo, hi = min(seen[name]), max(seen[name])
            lost_gaps.extend((name, s) for s in range(lo, hi + 1) if s not in seen[name])
    lateness_ms.sort()

    # Cross-check against what the runtime recorded in the shared SQLite file.
    db_runs: Counter[str] = Counter()
    db_outcomes: Counter[str] = Counter()
    skipped: set[str] = set()
    with contextlib.closing(sqlite3.connect(tmp / "runs.db")) as db:
        for ref, outcome in db.execute(
            "SELECT trigger_ref, outcome FROM worker_runs WHERE trigger = 'tick'"
        ):
            db_outcomes[outcome] += 1
            if outcome == "ok":
                db_runs[ref] += 1
            elif outcome == "skipped":
                skipped.add(ref)
    db_duplicates = sum(c - 1 for c in db_runs.values() if c > 1)
    # A slot with no run but a skipped row was coalesced, not lost.
    expected_runs = len(lateness_ms) + len(lost_window)
    not_run = sorted(set(lost_window) | set(lost_gaps))
    coalesced = [(w, s) for w, s in not_run if f"{w}/{s}" in skipped]
    lost = [(w, s) for w, s in not_run if f"{w}/{s}" not in skipped]
    lost_window = [ws for ws in lost_window if f"{ws[0]}/{ws[1]}" not in skipped]
    lost_gaps = [ws for ws in lost_gaps if f"{ws[0]}/{ws[1]}" not in skipped]

    p99 = percentile(lateness_ms, 99)
    return {
        "bench": "ticks",
        "processes": args.processes,
        "workers": args.workers,
        "interval_s": args.interval,
        "seconds": args.seconds,
        "expected_runs": expected_runs,
        "window_runs": len(lateness_ms),
        "total_runs": len(records),
        "lateness_ms": {
            "p50": percentile(lateness_ms, 50),
            "p99": p99,
            "max": lateness_ms[-1] if lateness_ms else math.nan,
            "min": lateness_ms[0] if lateness_ms else math.nan,
        },
        "goal_p99_ms": GOAL_P99_MS,
        "p99_over_goal": p99 / GOAL_P99_MS,
        "duplicates": duplicates,
        "lost": len(lost),
        "coalesced": len(coalesced),
        "lost_in_window": len(lost_window),
        "lost_in_gaps": len(lost_gaps),
        "lost_examples": [f"{w}/{s}" for w, s in lost[:10]],
        "runs_per_process": dict(sorted(per_process.items())),
        "db": {
            "tick_rows": sum(db_outcomes.values()),
            "outcomes": dict(db_outcomes),
            "duplicates": db_duplicates,
        },
        "children": children,
        "startup_s": {"scheduler_start": drove.start_s, "all_ready": drove.ready_s},
    }


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    _cancel_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-") as name:
        tmp = Path(name)
        return analyse(args, tmp, await drive(args, tmp))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=3, help="scheduler processes")
    parser.add_argument("--workers", type=int, default=50, help="periodic workers per process")
    parser.add_argument("--interval", type=float, default=1.0, help="worker interval, seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window, seconds")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 10 s window")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if p99 > 50 ms, or any duplicate or lost slot"
    )
    # Internal: how the parent starts a child.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 10.0
    if args.processes < 1 or args.workers < 1 or args.seconds <= 0 or args.interval < 0.1:
        parser.error("need --processes >= 1, --workers >= 1, --seconds > 0, --interval >= 0.1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        quiet_logs()
        # Line-buffered: every run is on disk at once, whatever happens to the process.
        with open(args.out, "a", buffering=1, encoding="utf-8") as out:
            return asyncio.run(child(args, out))
    quiet_logs()
    print(
        f"ticks: {args.processes} processes x {args.workers} workers at {args.interval:g} s "
        f"for {args.seconds:g} s, {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        summary = asyncio.run(parent(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; children and server stopped", file=sys.stderr)
        return 130
    late = summary["lateness_ms"]
    startup = summary["startup_s"]
    print(
        f"start-up: Scheduler.start() {max(startup['scheduler_start']):.2f} s "
        f"(slowest of {args.processes}), all processes ready {startup['all_ready']:.1f} s "
        f"after the first was spawned"
    )
    print(
        f"lateness over {summary['window_runs']} runs: p50 {late['p50']:.1f} ms, "
        f"p99 {late['p99']:.1f} ms, max {late['max']:.1f} ms "
        f"(goal p99 <= {GOAL_P99_MS:g} ms; p99/goal {summary['p99_over_goal']:.2f})"
    )
    print(
        f"duplicates {summary['duplicates']} (goal 0), lost {summary['lost']} (goal 0; "
        f"{summary['lost_in_window']} in window, {summary['lost_in_gaps']} in gaps), "
        f"coalesced {summary['coalesced']}, "
        f"runs per process {summary['runs_per_process']}, "
        f"runtime records {summary['db']['outcomes']} with {summary['db']['duplicates']} duplicates"
    )
    print(json.dumps(summary))
    met = (
        late["p99"] <= GOAL_P99_MS
        and summary["duplicates"] == 0
        and summary["lost"] == 0
        and summary["db"]["duplicates"] == 0
    )
    if args.check and not met:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
