"""A node-scoped worker, and a process that runs it alone (``python -m tests.scope_workers``).

The process stands for one process of a node in ``tests/test_scopes.py``:
the test SIGKILLs it in the middle of a run, as a crash would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.subjects import Subjects

HOLD_TIMEOUT = timedelta(seconds=8)
"""The run's timeout, and so the tick consumer's ack_wait: a dead process's
tick moves to another within 8 s, and the test has 8 s to kill a process
mid-run before the run times out (and its tick is acked)."""


class Hold:
    """A node-scoped worker that appends each run to a JSON-lines file, then
    holds the run ``hold`` seconds (a process killed meanwhile dies mid-run).
    """

    name = "hold"
    scope = "node"
    interval = timedelta(hours=1)
    timeout = HOLD_TIMEOUT

    def __init__(self, log: Path, process: str, hold: float = 0.0) -> None:
        self.log = log
        self.process = process
        self.hold = hold
        self.ran = asyncio.Event()

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        line = {
            "process": self.process,
            "node": ctx.tick.node,
            "slot": ctx.tick.slot,
            "attempt": ctx.attempt,
            "t": time.time(),
        }
        with self.log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        self.ran.set()
        await asyncio.sleep(self.hold)


def runs_of(log: Path) -> list[dict[str, object]]:
    """The runs :class:`Hold` wrote to ``log``."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


async def _main(url: str, prefix: str, node: str, process: str, log: Path) -> None:
    bus = Bus(Subjects(prefix), name=process)
    await bus.connect(url)
    scheduler = Scheduler(bus, process=process, node=node)
    # Holds its run far past the timeout: only a kill ends it early.
    scheduler.register(Hold(log, process, hold=3600))
    await scheduler.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await scheduler.stop(grace=timedelta(seconds=1))
    await bus.close()


if __name__ == "__main__":
    url = os.environ["SCOPE_NATS_URL"]  # credentials stay out of the process list
    prefix, node, process, log = sys.argv[1:5]
    asyncio.run(_main(url, prefix, node, process, Path(log)))
