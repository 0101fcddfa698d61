"""Event path throughput: an event-driven worker on our runtime against plain nats-py.

What is measured
    The time to consume a backlog of N events (default 50,000) from a
    JetStream events stream, once through our runtime and once through a
    plain nats-py loop, in the same process, against the same nats-server
    (started here, in a temporary directory, on 127.0.0.1 and an ephemeral
    port).

    * ours: a ``Scheduler`` with one event-driven worker (interval 0,
      ``subscriptions=("bench.*",)``) whose ``run`` only counts. Every event
      goes through the whole actor path: pulled into the mailbox (PullFeed), decode into
      ``Event``, ``RunContext``, timeout, run, ack, and a row in
      ``worker_runs`` of a real SQLite ``Store`` (batched writer, default
      flush interval) in the temporary directory, each run observed by the
      control plane's metrics (``ctrlplane.web.metrics.Metrics``: counters
      and histograms, as ``/metrics`` serves them).
    * raw: a durable pull consumer with explicit ack on a stream of the same
      kind (limits retention, file storage, same limits), ``fetch(batch)``,
      ``msgspec.json.decode(data, type=Event)``, ``await msg.ack()``.

Fair start
    Our worker's durable consumer is created with ``DeliverPolicy.NEW``, so
    it must exist before the backlog is published. Both paths therefore
    create their durable consumer first (ours by starting a scheduler and
    stopping it again, which leaves the durable consumer on the server at
    its position; raw with ``add_consumer``), then the same N messages (same
    payloads and ``Nats-Msg-Id`` headers) are published to each stream from a
    separate connection with ``publish_async`` (not measured), and only then
    the consumer side starts.

    The clock starts just before the consumer side binds (ours:
    ``Scheduler.start()``, which re-applies the consumer config and binds;
    raw: ``add_consumer`` with the same config, then ``pull_subscribe_bind``)
    and stops when the N-th message is handled *and* its effects are out:
    ours waits for the run store to flush to SQLite and for the connection to
    flush the acks, raw flushes the acks. "steady" figures, from the first
    handled message to the N-th, are printed too.

    Rounds alternate which path goes first; each round uses fresh subject
    prefixes (so fresh streams and consumers) for both paths.

Goal (from the issue): ours >= 0.8 x raw.

Run::

    python bench/event_path.py            # N=50,000, 3 rounds
    python bench/event_path.py --quick    # N=5,000, 1 round, a few seconds
    python bench/event_path.py -n 20000 --rounds 5 --batch 32 --check

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import msgspec
import nats
import nats.js
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.bus import Bus, Event, Subjects, encode
from ctrlplane.bus.connection import event_msg_id
from ctrlplane.bus.server import EmbeddedServer, ServerInfo
from ctrlplane.store import Store
from ctrlplane.web.metrics import Metrics

GOAL_RATIO = 0.8
EVENT_TYPE = "bench.created"
WORKER_NAME = "bench-consumer"
# The same consumer limits the actor uses for an event worker with the default
# 60 s timeout (actors/actor.py: ack_wait clamped to 30 s, max_ack_pending
# max(1000, prefetch), max_deliver max_attempts + 3).
RAW_ACK_WAIT = 30.0
RAW_MAX_ACK_PENDING = 1000
RAW_MAX_DELIVER = 8


@dataclass
class PathResult:
    """One path's figures in one round."""

    path: str
    messages: int
    seconds: float
    msg_per_s: float
    steady_seconds: float
    steady_msg_per_s: float


# ---------------------------------------------------------------- helpers


def quiet_logs() -> None:
    """Log warnings and errors only, to stderr, as the CLI does in production."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def make_backlog(n: int) -> list[tuple[bytes, str]]:
    """N encoded events with their de-duplication ids, as ``Bus.publish_event`` sends them."""
    backlog = []
    for i in range(n):
        event = Event(
            type=EVENT_TYPE,
            source="bench",
            instance_id=f"i-{i % 100:03d}",
            data={"seq": i, "region": "eu-west-1", "status": "running"},
        )
        backlog.append((encode(event), event_msg_id(event)))
    return backlog


async def publish_backlog(
    js: nats.js.JetStreamContext, subject: str, backlog: list[tuple[bytes, str]]
) -> float:
    """Publish ``backlog`` to ``subject`` with bounded concurrency; returns seconds taken."""
    started = time.perf_counter()
    futures = []
    for payload, msg_id in backlog:
        # publish_async holds at most 4,000 unacknowledged publishes (a semaphore).
        futures.append(await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
    async with asyncio.timeout(120):
        acks = await asyncio.gather(*futures)
    stored = sum(1 for ack in acks if not ack.duplicate)
    if stored != len(backlog):
        raise RuntimeError(f"published {len(backlog)} events but the stream kept {stored}")
    return time.perf_counter() - started


async def wait_settled(js: nats.js.JetStreamContext, stream: str, durable: str) -> None:
    """Wait until the server has processed every ack (nothing pending or unacknowledged)."""
    deadline = time.monotonic() + 10
    while True:
        info = await js.consumer_info(stream, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"consumer {durable} did not settle: {info.num_pending} pending, "
                f"{info.num_ack_pending} unacknowledged"
            )
        await asyncio.sleep(0.05)


def result(path: str, n: int, start: float, first: float, last: float, end: float) -> PathResult:
    seconds = end - start
    steady = max(last - first, 1e-9)
    return PathResult(
        path=path,
        messages=n,
        seconds=seconds,
        msg_per_s=n / seconds,
        steady_seconds=steady,
        steady_msg_per_s=(n - 1) / steady,
    )


# ------------------------------------------------------------------- ours


class CountingWorker:
    """An event-driven worker that only counts, and notes when it saw the first and N-th."""

    interval = timedelta(0)
    subscriptions = ("bench.*",)

    def __init__(self, target: int) -> None:
        self.name = WORKER_NAME
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    async def run(self, ctx: RunContext) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
        if self.count >= self.target:
            self.last = time.perf_counter()
            self.done.set()


async def run_ours(
    server: ServerInfo,
    publisher: nats.js.JetStreamContext,
    backlog: list[tuple[bytes, str]],
    prefix: str,
    db_path: Path,
    limit_s: float,
) -> PathResult:
    n = len(backlog)
    subjects = Subjects(prefix)
    bus = Bus(subjects, name="bench-ours")
    await bus.connect(server.client_url)
    store = await Store(db_path).open()
    try:
        # Create the streams and the durable consumer (DeliverPolicy.NEW) before
        # the backlog exists, then leave it on the server at its position.
        first = Scheduler(bus, runs=store.runs, process="bench-ours")
        first.register(CountingWorker(n))
        await first.start()
        await first.stop(grace=timedelta(seconds=1))

        await publish_backlog(publisher, subjects.event(EVENT_TYPE), backlog)

        worker = CountingWorker(n)
        # Observed by the metrics, as in a ControlPlane: their cost is on this path.
        metrics = Metrics(bus, store, list)
        scheduler = Scheduler(bus, runs=store.runs, process="bench-ours", observer=metrics)
        scheduler.register(worker)
        start = time.perf_counter()
        await scheduler.start()
        try:
            async with asyncio.timeout(limit_s):
                await worker.done.wait()
            await store.flush()
            await bus.nc.flush()
            end = time.perf_counter()
        finally:
            await scheduler.stop(grace=timedelta(seconds=2))

        # Check that everything was really done.
        await wait_settled(bus.js, subjects.events_stream, subjects.event_consumer(WORKER_NAME))
        row = await store.db.fetchone(
            "SELECT COUNT(*) FROM worker_runs WHERE worker = ? AND outcome = 'ok'",
            (WORKER_NAME,),
        )
        recorded = int(row[0]) if row else 0
        if worker.count != n or recorded != n:
            raise RuntimeError(f"ours: {worker.count} runs, {recorded} recorded, expected {n}")
        return result("ours", n, start, worker.first, worker.last, end)
    finally:
        await store.close()
        await bus.close()


# -------------------------------------------------------------------- raw


async def run_raw(
    server: ServerInfo,
    publisher: nats.js.JetStreamContext,
    backlog: list[tuple[bytes, str]],
    prefix: str,
    batch: int,
    limit_s: float,
) -> PathResult:
    n = len(backlog)
    stream = f"{prefix.upper()}_EVENTS"
    durable = f"events-{WORKER_NAME}"
    nc = await nats.connect(server.client_url, name="bench-raw")
    js = nc.jetstream()
    try:
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{prefix}.events.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=timedelta(days=7).total_seconds(),
                duplicate_window=timedelta(minutes=2).total_seconds(),
            )
        )
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=f"{prefix}.events.bench.*",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            max_ack_pending=RAW_MAX_ACK_PENDING,
            ack_wait=RAW_ACK_WAIT,
            max_deliver=RAW_MAX_DELIVER,
        )
        await js.add_consumer(stream, config)

        await publish_backlog(publisher, f"{prefix}.events.{EVENT_TYPE}", backlog)

        count = 0
        first = last = 0.0
        start = time.perf_counter()
        deadline = time.monotonic() + limit_s
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        while count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw: only {count} of {n} messages within {limit_s:g}s")
            try:
                msgs = await sub.fetch(batch, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                msgspec.json.decode(msg.data, type=Event)
                await msg.ack()
                count += 1
                if count == 1:
                    first = time.perf_counter()
        last = time.perf_counter()
        await nc.flush()
        end = time.perf_counter()
        await sub.unsubscribe()

        await wait_settled(js, stream, durable)
        return result("raw", n, start, first, last, end)
    finally:
        await nc.close()


# ------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, object]:
    # SIGTERM cancels the run, so the server is stopped and the temporary
    # directory removed on the way out.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    limit_s = max(60.0, args.messages / 1000)
    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "data")
        info = await server.start()
        try:
            publisher_nc = await nats.connect(info.client_url, name="bench-publisher")
            try:
                publisher = publisher_nc.jetstream()
                for r in range(args.rounds):
                    backlog = make_backlog(args.messages)
                    tag = uuid.uuid4().hex[:6]
                    order = ["raw", "ours"] if r % 2 == 0 else ["ours", "raw"]
                    got: dict[str, PathResult] = {}
                    for path in order:
                        if path == "ours":
                            db_path = Path(tmp) / f"runs-{r}.db"
                            prefix = f"bo{tag}"
                            got[path] = await run_ours(
                                info, publisher, backlog, prefix, db_path, limit_s
                            )
                        else:
                            got[path] = await run_raw(
                                info, publisher, backlog, f"br{tag}", args.batch, limit_s
                            )
                    ours, raw = got["ours"], got["raw"]
                    ratio = ours.msg_per_s / raw.msg_per_s
                    steady_ratio = ours.steady_msg_per_s / raw.steady_msg_per_s
                    print(
                        f"round {r + 1}/{args.rounds} ({' then '.join(order)}): "
                        f"ours {ours.msg_per_s:,.0f} msg/s ({ours.seconds:.2f} s), "
                        f"raw {raw.msg_per_s:,.0f} msg/s ({raw.seconds:.2f} s), "
                        f"ratio {ratio:.2f}  | steady: ours {ours.steady_msg_per_s:,.0f}, "
                        f"raw {raw.steady_msg_per_s:,.0f}, ratio {steady_ratio:.2f}",
                        flush=True,
                    )
                    rounds.append(
                        {
                            "ours": asdict(ours),
                            "raw": asdict(raw),
                            "ratio": ratio,
                            "steady_ratio": steady_ratio,
                        }
                    )
            finally:
                await publisher_nc.close()
        finally:
            await server.stop()

    def med(key: str, path: str | None = None) -> float:
        values = []
        for rnd in rounds:
            item = rnd[path] if path else rnd
            assert isinstance(item, dict)
            values.append(float(item[key]))
        return statistics.median(values)

    summary: dict[str, object] = {
        "bench": "event_path",
        "messages": args.messages,
        "rounds": args.rounds,
        "raw_batch": args.batch,
        "ours_msg_per_s": med("msg_per_s", "ours"),
        "raw_msg_per_s": med("msg_per_s", "raw"),
        "ratio": med("ratio"),
        "steady_ours_msg_per_s": med("steady_msg_per_s", "ours"),
        "steady_raw_msg_per_s": med("steady_msg_per_s", "raw"),
        "steady_ratio": med("steady_ratio"),
        "goal_ratio": GOAL_RATIO,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "per_round": rounds,
    }
    summary["goal_met"] = float(summary["ratio"]) >= GOAL_RATIO  # type: ignore[arg-type]
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--messages", type=int, default=50_000, help="events per path")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median is reported)")
    parser.add_argument("--batch", type=int, default=100, help="raw path fetch batch size")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 events, 1 round")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if ours < {GOAL_RATIO} x raw")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 5_000, 1
    if args.messages < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--messages, --rounds and --batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    print(
        f"event path: {args.messages:,} events per path, {args.rounds} round(s), "
        f"raw fetch batch {args.batch}, {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        summary = asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; server stopped", file=sys.stderr)
        return 130
    print(
        f"median: ours {summary['ours_msg_per_s']:,.0f} msg/s, "
        f"raw {summary['raw_msg_per_s']:,.0f} msg/s, "
        f"ratio {summary['ratio']:.2f} (goal >= {GOAL_RATIO}); "
        f"steady ratio {summary['steady_ratio']:.2f}"
    )
    print(json.dumps(summary))
    if args.check and not summary["goal_met"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
