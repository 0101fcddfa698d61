"""Workers that the CLI and multi-process tests load by ``module:Class`` reference.

They write what they do as JSON lines to ``$CTRLPLANE_TEST_LOG_DIR/<pid>.jsonl``
(one file per process, so no two writers share a file), which the tests read
back after the processes are gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from ctrlplane.actors import RunContext


def _log(record: dict[str, object]) -> None:
    folder = Path(os.environ["CTRLPLANE_TEST_LOG_DIR"])
    record = {**record, "pid": os.getpid(), "at": time.time()}
    with open(folder / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


class SlotLog:
    """Runs every second and logs the slot it ran."""

    name = "slot-log"
    interval = timedelta(seconds=1)

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        _log({"worker": self.name, "slot": ctx.tick.slot, "attempt": ctx.attempt})


class SlowFirstAttempt:
    """Hangs on its first delivery (the test kills that process), quick on the next."""

    name = "slow-first"
    interval = timedelta(hours=1)
    # ack_wait follows the timeout (2 s minimum): a dead process's tick is
    # redelivered to another within seconds.
    timeout = timedelta(seconds=3)

    async def run(self, ctx: RunContext) -> None:
        assert ctx.tick is not None
        _log({"worker": self.name, "slot": ctx.tick.slot, "attempt": ctx.attempt, "phase": "start"})
        if ctx.attempt == 1:
            await asyncio.sleep(60)
        _log({"worker": self.name, "slot": ctx.tick.slot, "attempt": ctx.attempt, "phase": "done"})


class SwallowsCancel:
    """Runs every second (one run at a time), logs that it runs, and ignores cancellation.

    Written badly on purpose: the process must still exit within
    ``stop_grace`` + 1 s of SIGTERM.
    """

    name = "swallows-cancel"
    interval = timedelta(seconds=1)

    async def run(self, ctx: RunContext) -> None:
        _log({"worker": self.name, "phase": "start"})
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                _log({"worker": self.name, "phase": "cancel ignored"})


class BadName:
    """Cannot be registered: its name is not a valid subject token."""

    name = "Bad Name!"
    interval = timedelta(seconds=5)

    async def run(self, ctx: RunContext) -> None:
        return None


def read_log(folder: Path) -> list[dict[str, object]]:
    """Every record every process wrote, in time order."""
    records: list[dict[str, object]] = []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    records.sort(key=lambda r: float(str(r["at"])))
    return records


class _Colour(Enum):
    RED = 1


class LogsValues:
    """Logs, at debug, values that JSON has no type for: a datetime, a duration, a path, an enum."""

    name = "logs-values"
    interval = timedelta(seconds=1)

    async def run(self, ctx: RunContext) -> None:
        ctx.log.debug(
            "values logged",
            when=datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC),
            took=timedelta(minutes=2),
            path=Path("/var/lib/ctrlplane"),
            colour=_Colour.RED,
        )


class FailsFirst:
    """Fails its first run in a process, succeeds after."""

    name = "fails-first"
    interval = timedelta(seconds=1)

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: RunContext) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run fails")


class FailsOnEvent:
    """Raises on every ``test.fail`` event, naming the event's ``n``; gives up after two tries.

    Its first try is recorded as an ``error`` run, its second dead-letters the event.
    """

    name = "fails-on-event"
    interval = timedelta(0)
    subscriptions = ("test.fail",)
    max_attempts = 2

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        raise RuntimeError(f"boom on n={ctx.event.data.get('n')}")


def fixed_marker() -> Path:
    """The file whose presence makes :class:`FailsUntilFixed` succeed."""
    return Path(os.environ["CTRLPLANE_TEST_LOG_DIR"]) / "fixed"


class FailsUntilFixed:
    """Logs every ``test.fail`` event it runs; raises while :func:`fixed_marker`
    is absent (gives up after two tries), succeeds once it is there."""

    name = "fails-until-fixed"
    interval = timedelta(0)
    subscriptions = ("test.fail",)
    max_attempts = 2

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        n = ctx.event.data.get("n")
        fixed = fixed_marker().exists()
        _log({"worker": self.name, "n": n, "attempt": ctx.attempt, "ok": fixed})
        if not fixed:
            raise RuntimeError(f"boom on n={n}")


class SeesFail:
    """Another subscriber of ``test.fail``: logs every event it runs."""

    name = "sees-fail"
    interval = timedelta(0)
    subscriptions = ("test.fail",)

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        _log({"worker": self.name, "n": ctx.event.data.get("n"), "attempt": ctx.attempt})
