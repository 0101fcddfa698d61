"""Health sweep throughput: HealthRunner against a plain aiohttp GET loop, and the result store.

What is measured
    1. A sweep of N HTTP checks (default 10,000: N / 10 instances with 10
       ``http`` checks each) against a tiny aiohttp server in another OS
       process (GET / answers 200 "ok"), once through our runtime and once
       through a plain aiohttp loop, at the same concurrency C (default 64,
       HealthRunner's default), in the same run.

       * ours: a real SQLite ``Store`` in a temporary directory holding the
         instances (recorded ``running``) and their checks, all pointing at
         the server; ``HealthRunner(store, {"http": HttpChecker(max_connections=C,
         max_per_host=C)}, concurrency=C)`` (the same pool as the raw
         path's); one ``sweep()`` (read instances and states, run the checks,
         fold them into states, store results and states in one batched
         write, flush included) and then the publishing of its
         change events to a real nats-server, as ``HealthRunner.run`` does it:
         ``Bus.publish_events`` (every event acknowledged by JetStream, 256
         acks outstanding at most). The first sweep turns every check
         unknown -> healthy, so it publishes N ``health.passed`` events; the
         second sweep changes nothing and publishes none. Both are reported.
         ``HttpChecker`` is aiohttp too (one ``ClientSession``, no cookie
         jar, no redirects, no ``Accept-Encoding``, body read up to 64 KiB).
       * raw: one ``aiohttp.ClientSession`` with ``TCPConnector(limit=C)``,
         C worker tasks taking requests from a shared counter, each
         ``GET``, read the body, check the status.

       Each round uses a fresh store, fresh streams, a fresh checker session
       and a fresh raw session; rounds alternate which path goes first; the
       medians are reported. ratio = ours checks/s / raw req/s.
       Goals (from issue 10): steady sweep (the 2nd) >= 0.8 x raw, first
       sweep with N transitions published >= 0.7 x raw.

    2. Result-store throughput: M results (default 100,000) written through
       ``HealthStore.record(results, [])`` (results only, no state updates)
       and ``Store.flush()``, against plain ``sqlite3`` ``executemany`` of
       the same rows into a file with the same schema (created by opening a
       ``Store`` on it once) and the same PRAGMAs (WAL, synchronous=NORMAL),
       in one transaction. Both clocks include turning the ``CheckResult``
       objects into rows. Goal (from the issue): ours >= 0.8 x raw.

Also printed: this process's CPU time per check/request (all threads, so
SQLite's too) and the target server's, read from /proc, which shows whether
the server or the client is the limit.

Run::

    python bench/health_sweep.py            # 10,000 checks, 100,000 results, 5 rounds
    python bench/health_sweep.py --quick    # 1,000 checks, 10,000 results, 1 round
    python bench/health_sweep.py --checks 20000 --concurrency 128 --check

The last line printed is a JSON object with every figure. The target server
cannot outlive the benchmark: it stops when its stdin closes, dies with the
parent (Linux), and is terminated, then killed, in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import platform
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from ctrlplane.bus import Bus, Subjects
from ctrlplane.bus.server import EmbeddedServer, ServerInfo
from ctrlplane.checks import HttpChecker
from ctrlplane.store import Store
from ctrlplane.store.health import CheckResult, CheckSpec, HealthStatus, Outcome
from ctrlplane.store.instances import DesiredState, Instance, InstanceSpec, InstanceState
from ctrlplane.workers.health_runner import HealthRunner

SCRIPT = Path(__file__).resolve()
GOAL_SWEEP = 0.7
"""The first sweep: N transitions stored and published."""
GOAL_STEADY = 0.8
"""The second sweep: nothing changes."""
GOAL_STORE = 0.8
# BatchWriter's default max_pending: past it, queued rows are dropped. A run
# with more results than this writes them in chunks of this size, one
# transaction each, on both paths.
WRITER_MAX_PENDING = 100_000
# The statement HealthStore.record queues for each result (store/health.py).
INSERT_RESULT = (
    "INSERT INTO health_results "
    "(instance_id, check_name, time, outcome, status, latency_ms, message) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SERVER_READY_S = 20.0
WARMUP_REQUESTS = 1_000


@dataclass
class OursSweep:
    """One sweep through HealthRunner, and the publishing of its events."""

    checks: int
    events: int
    seconds: float
    """sweep + publish."""
    checks_per_s: float
    sweep_s: float
    flush_s: float
    """The part of ``sweep_s`` spent in ``Store.flush`` (the one batched write)."""
    publish_s: float
    cpu_us_per_check: float
    server_cpu_us_per_check: float | None


@dataclass
class RawLoop:
    """One plain aiohttp GET loop."""

    requests: int
    seconds: float
    req_per_s: float
    cpu_us_per_request: float
    server_cpu_us_per_request: float | None


@dataclass
class StoreWrite:
    """M results written by one path."""

    path: str
    rows: int
    seconds: float
    rows_per_s: float


# ---------------------------------------------------------------- helpers


def quiet_logs() -> None:
    """Log warnings and errors only, to stderr, as the CLI does in production."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it do not.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_item_us(seconds: float | None, items: int) -> float | None:
    return None if seconds is None else seconds / items * 1e6


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def result_row(r: CheckResult) -> tuple[object, ...]:
    """The row HealthStore.record writes for ``r``."""
    latency = None if r.latency is None else r.latency.total_seconds() * 1000
    return (
        r.instance_id,
        r.check,
        r.time.timestamp(),
        r.outcome.value,
        r.status.value,
        latency,
        r.message,
    )


def chunks(items: list[CheckResult], size: int) -> list[list[CheckResult]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------- target server


async def serve() -> int:
    """The target: GET / answers 200 "ok" until stdin closes."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        print(f"PORT {port}", flush=True)
        await stdin.read()  # until the parent closes it (or goes away)
    finally:
        await runner.cleanup()
    return 0


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark process dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_target() -> tuple[asyncio.subprocess.Process, int]:
    """Start the target server process; returns it and the port it listens on."""
    return await start_server(SCRIPT, "--serve", SERVER_READY_S)


async def start_server(
    script: Path, flag: str, ready_s: float
) -> tuple[asyncio.subprocess.Process, int]:
    """Run ``script flag`` as a server process; returns it and the port it
    prints (``PORT n``) within ``ready_s`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        flag,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(ready_s):
            line = await proc.stdout.readline()
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"target server did not start: {line!r}")
        return proc, int(line.split()[1])
    except BaseException:
        await stop_target(proc)
        raise


async def stop_target(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        async with asyncio.timeout(5):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# ------------------------------------------------------------------- ours


class TimedStore(Store):
    """A Store that adds up the time spent in ``flush`` (HealthRunner's one write)."""

    flush_s = 0.0

    async def flush(self) -> None:
        started = time.perf_counter()
        try:
            await super().flush()
        finally:
            self.flush_s += time.perf_counter() - started


async def populate(store: Store, n: int, per_instance: int, url: str) -> None:
    """N http checks on ceil(N / per_instance) running instances."""
    now = datetime.now(UTC)
    spec = InstanceSpec(command=["true"])
    for k, first in enumerate(range(0, n, per_instance)):
        instance = Instance(
            id=f"i-{k:06d}",
            name=f"bench-{k:06d}",
            provider="process",
            spec=spec,
            spec_hash=spec.digest(),
            desired=DesiredState.RUNNING,
            state=InstanceState.RUNNING,
            created=now,
            updated=now,
        )
        await store.instances.put(instance)
        checks = [
            CheckSpec(name=f"http-{j}", type="http", target=url)
            for j in range(min(per_instance, n - first))
        ]
        await store.health.set_checks(instance.id, checks)


async def timed_sweep(
    runner: HealthRunner, store: TimedStore, bus: Bus, n: int, server_pid: int
) -> OursSweep:
    store.flush_s = 0.0
    cpu0, srv0 = time.process_time(), process_cpu_s(server_pid)
    started = time.perf_counter()
    events = await runner.sweep()
    swept = time.perf_counter()
    # As HealthRunner.run publishes them (ctx.publish_many is Bus.publish_events).
    await bus.publish_events(events)
    # A sweep with no transitions leaves its rows to the writer's next round;
    # the storing is part of the work measured here, so wait for it.
    await store.flush()
    ended = time.perf_counter()
    cpu = time.process_time() - cpu0
    srv = delta(process_cpu_s(server_pid), srv0)
    seconds = ended - started
    return OursSweep(
        checks=n,
        events=len(events),
        seconds=seconds,
        checks_per_s=n / seconds,
        sweep_s=swept - started,
        flush_s=store.flush_s,
        publish_s=ended - swept,
        cpu_us_per_check=cpu / n * 1e6,
        server_cpu_us_per_check=per_item_us(srv, n),
    )


async def run_ours(
    info: ServerInfo, url: str, args: argparse.Namespace, tmp: Path, server_pid: int
) -> tuple[OursSweep, OursSweep]:
    n, c = args.checks, args.concurrency
    store = TimedStore(tmp / f"sweep-{uuid.uuid4().hex[:8]}.db")
    await store.open()
    bus = Bus(Subjects(f"hs{uuid.uuid4().hex[:8]}"), name="bench-health-sweep")
    checker = HttpChecker(max_connections=c, max_per_host=c)
    try:
        await bus.connect(info.client_url)
        await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
        await populate(store, n, args.per_instance, url)
        runner = HealthRunner(store, {"http": checker}, concurrency=c)
        first = await timed_sweep(runner, store, bus, n, server_pid)
        second = await timed_sweep(runner, store, bus, n, server_pid)

        # Check that everything was really done.
        if first.events != n or second.events != 0:
            raise RuntimeError(
                f"ours: {first.events} events from the first sweep (expected {n}), "
                f"{second.events} from the second (expected 0)"
            )
        stream = await bus.js.stream_info(bus.subjects.events_stream)
        row = await store.db.fetchone("SELECT COUNT(*) FROM health_results")
        results = int(row[0]) if row else 0
        row = await store.db.fetchone(
            "SELECT COUNT(*) FROM health_checks WHERE status = ? AND consecutive_passes >= 1",
            (HealthStatus.HEALTHY.value,),
        )
        healthy = int(row[0]) if row else 0
        if stream.state.messages != n or results != 2 * n or healthy != n:
            raise RuntimeError(
                f"ours: {stream.state.messages} events stored (expected {n}), "
                f"{results} results (expected {2 * n}), {healthy} checks healthy "
                f"after two passes (expected {n}); writer dropped {store.writer.dropped}"
            )
        return first, second
    finally:
        await checker.close()
        await store.close()
        await bus.close()


# -------------------------------------------------------------------- raw


async def get_loop(url: str, n: int, c: int) -> int:
    """N GETs by C workers on one session with a pool of C; returns how many got 200."""
    ok = 0
    remaining = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def worker() -> None:
            nonlocal ok, remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1

        await asyncio.gather(*(worker() for _ in range(c)))
    return ok


async def run_raw(url: str, n: int, c: int, server_pid: int) -> RawLoop:
    cpu0, srv0 = time.process_time(), process_cpu_s(server_pid)
    started = time.perf_counter()
    ok = await get_loop(url, n, c)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    srv = delta(process_cpu_s(server_pid), srv0)
    if ok != n:
        raise RuntimeError(f"raw: {ok} of {n} requests answered 200")
    return RawLoop(
        requests=n,
        seconds=seconds,
        req_per_s=n / seconds,
        cpu_us_per_request=cpu / n * 1e6,
        server_cpu_us_per_request=per_item_us(srv, n),
    )


# ------------------------------------------------------------ result store


def make_results(m: int) -> list[CheckResult]:
    base = datetime.now(UTC)
    return [
        CheckResult(
            instance_id=f"i-{i // 10:06d}",
            check=f"http-{i % 10}",
            time=base + timedelta(milliseconds=i),
            outcome=Outcome.PASS,
            status=HealthStatus.HEALTHY,
            latency=timedelta(microseconds=500 + i % 1000),
            message="200 OK",
        )
        for i in range(m)
    ]


async def store_ours(path: Path, results: list[CheckResult]) -> StoreWrite:
    store = await Store(path).open()
    try:
        started = time.perf_counter()
        for chunk in chunks(results, WRITER_MAX_PENDING):
            store.health.record(chunk, [])
            await store.flush()
        seconds = time.perf_counter() - started
        row = await store.db.fetchone("SELECT COUNT(*) FROM health_results")
        written = int(row[0]) if row else 0
        if written != len(results) or store.writer.dropped:
            raise RuntimeError(
                f"store ours: {written} rows of {len(results)}, {store.writer.dropped} dropped"
            )
    finally:
        await store.close()
    return StoreWrite("ours", len(results), seconds, len(results) / seconds)


def store_raw_sync(path: Path, results: list[CheckResult]) -> StoreWrite:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # The same PRAGMAs as Store.open (journal_mode is persistent already).
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        started = time.perf_counter()
        for chunk in chunks(results, WRITER_MAX_PENDING):
            rows = [result_row(r) for r in chunk]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT_RESULT, rows)
            db.execute("COMMIT")
        seconds = time.perf_counter() - started
        (written,) = db.execute("SELECT COUNT(*) FROM health_results").fetchone()
        if written != len(results):
            raise RuntimeError(f"store raw: {written} rows of {len(results)}")
    finally:
        db.close()
    return StoreWrite("raw", len(results), seconds, len(results) / seconds)


async def store_raw(path: Path, results: list[CheckResult]) -> StoreWrite:
    # The same schema, made by the same migrations; then plain sqlite3 alone.
    store = await Store(path).open()
    await store.close()
    return store_raw_sync(path, results)


# ------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, object]:
    # SIGTERM cancels the run, so the servers are stopped and the temporary
    # directory removed on the way out.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    limit_s = max(120.0, args.checks / 100)
    sweeps: list[dict[str, object]] = []
    writes: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-") as name:
        tmp = Path(name)
        nats_server = EmbeddedServer(tmp / "nats")
        info = await nats_server.start()
        try:
            target, port = await start_target()
            try:
                url = f"http://127.0.0.1:{port}/"
                # Warm both processes up (imports, first connections); not measured.
                await get_loop(url, WARMUP_REQUESTS, args.concurrency)
                for r in range(args.rounds):
                    order = ["raw", "ours"] if r % 2 == 0 else ["ours", "raw"]
                    raw: RawLoop | None = None
                    ours: tuple[OursSweep, OursSweep] | None = None
                    for path in order:
                        if path == "ours":
                            async with asyncio.timeout(limit_s):
                                ours = await run_ours(info, url, args, tmp, target.pid)
                        else:
                            async with asyncio.timeout(limit_s):
                                raw = await run_raw(url, args.checks, args.concurrency, target.pid)
                    assert raw is not None and ours is not None
                    first, second = ours
                    ratio_first = first.checks_per_s / raw.req_per_s
                    ratio_second = second.checks_per_s / raw.req_per_s
                    print(
                        f"sweep round {r + 1}/{args.rounds} ({' then '.join(order)}): "
                        f"raw {raw.req_per_s:,.0f} req/s ({raw.seconds:.2f} s) | "
                        f"ours 1st {first.checks_per_s:,.0f} checks/s ({first.seconds:.2f} s: "
                        f"sweep {first.sweep_s:.2f} incl. flush {first.flush_s:.2f}, "
                        f"publish {first.events:,} events {first.publish_s:.2f}), "
                        f"ratio {ratio_first:.2f} | "
                        f"ours 2nd {second.checks_per_s:,.0f} checks/s ({second.seconds:.2f} s, "
                        f"flush {second.flush_s:.2f}), ratio {ratio_second:.2f}",
                        flush=True,
                    )
                    print(
                        f"  CPU us per check/request: client raw {raw.cpu_us_per_request:.0f}, "
                        f"ours 1st {first.cpu_us_per_check:.0f}, "
                        f"ours 2nd {second.cpu_us_per_check:.0f}; server raw "
                        f"{_us(raw.server_cpu_us_per_request)}, ours 1st "
                        f"{_us(first.server_cpu_us_per_check)}, ours 2nd "
                        f"{_us(second.server_cpu_us_per_check)}",
                        flush=True,
                    )
                    sweeps.append(
                        {
                            "order": order,
                            "raw": asdict(raw),
                            "ours_first": asdict(first),
                            "ours_second": asdict(second),
                            "ratio_first": ratio_first,
                            "ratio_second": ratio_second,
                        }
                    )
            finally:
                await stop_target(target)

            results = make_results(args.results)
            for r in range(args.rounds):
                order = ["raw", "ours"] if r % 2 == 0 else ["ours", "raw"]
                got: dict[str, StoreWrite] = {}
                for path in order:
                    file = tmp / f"results-{path}-{r}.db"
                    if path == "ours":
                        got[path] = await store_ours(file, results)
                    else:
                        got[path] = await store_raw(file, results)
                    file.unlink()
                ratio = got["ours"].rows_per_s / got["raw"].rows_per_s
                print(
                    f"store round {r + 1}/{args.rounds} ({' then '.join(order)}): "
                    f"ours {got['ours'].rows_per_s:,.0f} rows/s ({got['ours'].seconds:.3f} s), "
                    f"raw {got['raw'].rows_per_s:,.0f} rows/s ({got['raw'].seconds:.3f} s), "
                    f"ratio {ratio:.2f}",
                    flush=True,
                )
                writes.append(
                    {
                        "order": order,
                        "ours": asdict(got["ours"]),
                        "raw": asdict(got["raw"]),
                        "ratio": ratio,
                    }
                )
        finally:
            await nats_server.stop()

    def med(rounds: list[dict[str, object]], key: str, path: str | None = None) -> float:
        values = []
        for rnd in rounds:
            item = rnd[path] if path else rnd
            assert isinstance(item, dict)
            values.append(float(item[key]))
        return statistics.median(values)

    ratio_first = med(sweeps, "ratio_first")
    ratio_second = med(sweeps, "ratio_second")
    ratio_store = med(writes, "ratio")
    return {
        "bench": "health_sweep",
        "checks": args.checks,
        "checks_per_instance": args.per_instance,
        "concurrency": args.concurrency,
        "results": args.results,
        "rounds": args.rounds,
        "raw_req_per_s": med(sweeps, "req_per_s", "raw"),
        "ours_first_checks_per_s": med(sweeps, "checks_per_s", "ours_first"),
        "ours_first_sweep_s": med(sweeps, "sweep_s", "ours_first"),
        "ours_first_flush_s": med(sweeps, "flush_s", "ours_first"),
        "ours_first_publish_s": med(sweeps, "publish_s", "ours_first"),
        "ours_second_checks_per_s": med(sweeps, "checks_per_s", "ours_second"),
        "ours_second_flush_s": med(sweeps, "flush_s", "ours_second"),
        "ratio_first": ratio_first,
        "ratio_second": ratio_second,
        "goal_sweep_ratio": GOAL_SWEEP,
        "goal_steady_ratio": GOAL_STEADY,
        "store_ours_rows_per_s": med(writes, "rows_per_s", "ours"),
        "store_raw_rows_per_s": med(writes, "rows_per_s", "raw"),
        "store_ratio": ratio_store,
        "goal_store_ratio": GOAL_STORE,
        "goal_met": {
            "sweep_first": ratio_first >= GOAL_SWEEP,
            "sweep_second": ratio_second >= GOAL_STEADY,
            "store": ratio_store >= GOAL_STORE,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "aiohttp": aiohttp.__version__,
        },
        "per_round": {"sweep": sweeps, "store": writes},
    }


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--checks", type=int, default=10_000, help="HTTP checks per sweep")
    parser.add_argument(
        "--per-instance", type=int, default=10, help="checks per instance (default 10)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="checks / requests in flight (default 64)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument(
        "--results", type=int, default=100_000, help="results written in the store comparison"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 checks, 10,000 results, 1 round"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=(
            f"exit 1 if the 1st sweep ratio < {GOAL_SWEEP}, the 2nd < {GOAL_STEADY} "
            f"or the store ratio < {GOAL_STORE}"
        ),
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.checks, args.results, args.rounds = 1_000, 10_000, 1
    if min(args.checks, args.per_instance, args.concurrency, args.rounds, args.results) < 1:
        parser.error("--checks, --per-instance, --concurrency, --rounds, --results must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return asyncio.run(serve())
    quiet_logs()
    print(
        f"health sweep: {args.checks:,} http checks ({args.per_instance} per instance), "
        f"concurrency {args.concurrency}, {args.rounds} round(s); result store: "
        f"{args.results:,} rows; {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        summary = asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    print(
        f"median sweep: raw {summary['raw_req_per_s']:,.0f} req/s; "
        f"ours 1st sweep {summary['ours_first_checks_per_s']:,.0f} checks/s "
        f"(ratio {summary['ratio_first']:.2f}), 2nd sweep "
        f"{summary['ours_second_checks_per_s']:,.0f} checks/s "
        f"(ratio {summary['ratio_second']:.2f}) (goals >= {GOAL_SWEEP}, >= {GOAL_STEADY})"
    )
    print(
        f"median store: ours {summary['store_ours_rows_per_s']:,.0f} rows/s, "
        f"raw {summary['store_raw_rows_per_s']:,.0f} rows/s, "
        f"ratio {summary['store_ratio']:.2f} (goal >= {GOAL_STORE})"
    )
    print(json.dumps(summary))
    goals = summary["goal_met"]
    assert isinstance(goals, dict)
    if args.check and not all(goals.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
