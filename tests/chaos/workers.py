"""Workers for the chaos suite, loaded by ``ctrlplane run`` as ``tests.chaos.workers:REF``.

Every run appends a ``start`` line when it begins and an ``end`` line as its
last statement to the one run log named by ``$CHAOS_RUN_LOG``, shared by all
processes. Each line is one ``os.write`` on an ``O_APPEND`` descriptor and well
under 4 KiB, so lines of several processes never interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

from ctrlplane.actors import RunContext

RUN_LOG_ENV = "CHAOS_RUN_LOG"
BEAT_COUNT = 20
BEAT_HOLD_S = 0.2
"""How long a beat's run lasts: long enough that two overlapping runs show."""

_fd: int | None = None


def append(line: dict[str, object]) -> None:
    """Append one JSON line to the shared run log (one atomic write)."""
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[RUN_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    os.write(_fd, data)


def log_run(ctx: RunContext, phase: str) -> None:
    """One ``start``, ``end`` (completed) or ``abort`` (cancelled) line for ``ctx``'s run."""
    slot = ctx.tick.slot if ctx.tick is not None else None
    if ctx.tick is not None:
        ref = ctx.tick.msg_id
    elif ctx.event is not None:
        ref = ctx.event.id
    else:
        ref = ctx.run_id
    append(
        {
            "ev": phase,
            "w": ctx.worker,
            "ref": ref,
            "slot": slot,
            "run": ctx.run_id,
            "a": ctx.attempt,
            "pid": os.getpid(),
            "t": time.time(),
        }
    )


class Beat:
    """A periodic worker whose run lasts :data:`BEAT_HOLD_S`."""

    def __init__(self, name: str, interval: timedelta = timedelta(seconds=1)) -> None:
        self.name = name
        self.interval = interval

    async def run(self, ctx: RunContext) -> None:
        log_run(ctx, "start")
        try:
            await asyncio.sleep(BEAT_HOLD_S)
        except BaseException:
            # Cancelled (timeout, stop): the run stopped here without completing.
            log_run(ctx, "abort")
            raise
        log_run(ctx, "end")


def beat_name(i: int) -> str:
    return f"beat-{i:02d}"


BEATS = {f"BEAT_{i:02d}": Beat(beat_name(i)) for i in range(BEAT_COUNT)}
"""Twenty 1 s beats, referenced as ``tests.chaos.workers:BEAT_00`` ... ``BEAT_19``."""


def __getattr__(name: str) -> Beat:
    # PEP 562: the beats are module attributes for the config's references.
    try:
        return BEATS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def beat_refs(count: int) -> list[str]:
    """Config references of the first ``count`` beats."""
    return [f"tests.chaos.workers:BEAT_{i:02d}" for i in range(count)]


class FloodSink:
    """An event worker on ``flood.*`` that only logs its runs."""

    name = "flood-sink"
    interval = timedelta(0)
    subscriptions = ("flood.*",)
    # ack_wait follows the timeout: messages held by a killed process come back in 5 s.
    timeout = timedelta(seconds=5)

    async def run(self, ctx: RunContext) -> None:
        log_run(ctx, "start")
        log_run(ctx, "end")


class AckVictim:
    """A periodic worker whose process the ack-dropping proxy kills when it acks."""

    name = "ack-victim"
    # Long: the tick handed back after ack_wait is not stale, so it is run, not coalesced.
    interval = timedelta(seconds=60)
    timeout = timedelta(seconds=3)

    async def run(self, ctx: RunContext) -> None:
        log_run(ctx, "start")
        await asyncio.sleep(0.05)
        log_run(ctx, "end")


class LoopBlocker:
    """Blocks the event loop for 5 s with ``time.sleep``: a bug in a worker."""

    name = "loop-blocker"
    interval = timedelta(seconds=8)
    timeout = timedelta(seconds=10)

    async def run(self, ctx: RunContext) -> None:
        log_run(ctx, "start")
        time.sleep(5)  # noqa: ASYNC251 - the fault under test
        log_run(ctx, "end")


class CancelSwallower:
    """Ignores cancellation for up to 40 s: a bug in a worker the process must outlive."""

    name = "cancel-swallower"
    interval = timedelta(seconds=30)
    timeout = timedelta(seconds=60)

    async def run(self, ctx: RunContext) -> None:
        log_run(ctx, "start")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                append({"ev": "swallowed", "w": self.name, "pid": os.getpid(), "t": time.time()})
        log_run(ctx, "end")
