"""Publishing a batch of events: our BatchPublisher against nats-py's publish_async.

What is measured
    The time to publish N messages (default 10,000, about the size of a
    health event) to a JetStream stream and have every ack back, in the same
    process, against the same nats-server (started here, in a temporary
    directory, on 127.0.0.1 and an ephemeral port), with the same window of
    outstanding acks (default 256, what ``Bus.publish_events`` uses):

    * ours: ``BatchPublisher.publish`` (plain publishes with reply subjects
      under one inbox, one subscription settling them all);
    * raw: ``JetStreamContext.publish_async`` with
      ``publish_async_max_pending`` = the window, then ``gather`` of the
      futures (``publish_async_completed`` waits for the same thing but says
      nothing of failures, which a caller needs).

    Each round publishes to a fresh stream for each path; rounds alternate
    which path goes first. The CPU time of the process is printed too.

Run::

    python bench/publish.py                 # N=10,000, 5 rounds
    python bench/publish.py -n 2000 --rounds 3

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.js.api import StreamConfig

from ctrlplane.bus.connection import MSG_ID
from ctrlplane.bus.publisher import BatchPublisher
from ctrlplane.bus.server import EmbeddedServer


def _messages(prefix: str, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    body = {"specversion": "1.0", "type": "health.failed", "source": "bench", "data": "x" * 200}
    return [
        (f"{prefix}.ev", msgspec.json.encode({**body, "id": str(i)}), {MSG_ID: f"{prefix}/{i}"})
        for i in range(n)
    ]


async def _stream(nc: Client, prefix: str) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=prefix.upper(), subjects=[f"{prefix}.>"]))


async def ours(nc: Client, prefix: str, n: int, window: int) -> tuple[float, float]:
    messages = _messages(prefix, n)
    publisher = BatchPublisher(nc)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        missed = await publisher.publish(messages, window=window)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        await publisher.close()
    assert not missed, f"ours: {len(missed)} not acked"
    return t1 - t0, c1 - c0


async def raw(nc: Client, prefix: str, n: int, window: int) -> tuple[float, float]:
    messages = _messages(prefix, n)
    js = nc.jetstream(publish_async_max_pending=window)
    t0, c0 = time.perf_counter(), time.process_time()
    futures = [
        await js.publish_async(subject, payload, headers=headers)
        for subject, payload, headers in messages
    ]
    acks = await asyncio.gather(*futures, return_exceptions=True)
    t1, c1 = time.perf_counter(), time.process_time()
    failed = [a for a in acks if isinstance(a, BaseException)]
    assert not failed, f"raw: {len(failed)} not acked: {failed[0]!r}"
    return t1 - t0, c1 - c0


async def bench(args: argparse.Namespace) -> dict[str, object]:
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ctrlplane-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "data")
        info = await server.start()
        try:
            nc = await nats.connect(info.client_url, name="bench-publish")
            try:
                for r in range(args.rounds):
                    tag = uuid.uuid4().hex[:6]
                    got: dict[str, tuple[float, float]] = {}
                    for path in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
                        prefix = f"p{path}{tag}"
                        await _stream(nc, prefix)
                        run = ours if path == "ours" else raw
                        got[path] = await run(nc, prefix, args.messages, args.window)
                    row = {
                        "ours_s": got["ours"][0],
                        "raw_s": got["raw"][0],
                        "ours_cpu_us": got["ours"][1] / args.messages * 1e6,
                        "raw_cpu_us": got["raw"][1] / args.messages * 1e6,
                    }
                    rounds.append(row)
                    print(
                        f"round {r + 1}: ours {args.messages / row['ours_s']:,.0f} msg/s "
                        f"({row['ours_cpu_us']:.1f} us CPU each), raw "
                        f"{args.messages / row['raw_s']:,.0f} msg/s ({row['raw_cpu_us']:.1f} us)"
                    )
            finally:
                await nc.close()
        finally:
            await server.stop()
    ours_rate = args.messages / statistics.median(r["ours_s"] for r in rounds)
    raw_rate = args.messages / statistics.median(r["raw_s"] for r in rounds)
    print(
        f"median: ours {ours_rate:,.0f} msg/s, raw publish_async {raw_rate:,.0f} msg/s, "
        f"ours / raw {ours_rate / raw_rate:.2f}"
    )
    return {
        "messages": args.messages,
        "window": args.window,
        "ours_per_s": ours_rate,
        "raw_per_s": raw_rate,
        "ratio": ours_rate / raw_rate,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=256, help="acks outstanding at most")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
