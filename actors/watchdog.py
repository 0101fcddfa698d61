"""Event-loop lag: notice a loop that stopped turning, and name the run that stopped it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("ctrlplane.watchdog")

BEAT_EVERY = 0.1
"""How often the loop marks itself alive."""
DEFAULT_THRESHOLD = 1.0
"""Lag past which the loop counts as blocked."""
STALL_AFTERMATH = 0.2
"""How long after a stall what the socket buffered during it is still being read."""


class LoopWatchdog:
    """Watches one event loop from another thread.

    The loop beats every :data:`BEAT_EVERY` seconds (:meth:`run`, a task in
    that loop). Another thread calls :meth:`check`; when the last beat is
    older than ``threshold``, the task the loop is stuck in is looked up and
    named by the worker it belongs to (:meth:`name_task`): logged as
    ``event loop blocked`` at once, and when the loop turns again as
    ``event loop unblocked`` with how long it was stuck, and reported to
    ``on_block(worker, seconds)`` in the loop.

    Args:
        loop: The loop to watch.
        on_block: Called in ``loop`` after a block, with the worker (or the
            task's name when no worker owns it) and the seconds it lasted.
        threshold: Lag in seconds that counts as blocked.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_block: Callable[[str, float], None],
        *,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self._loop = loop
        self._on_block = on_block
        self.threshold = threshold
        self.last_beat = time.monotonic()
        self._owners: dict[asyncio.Task[Any], str] = {}
        self._blocked: tuple[float, str] | None = None
        self._stall: tuple[float, float] | None = None

    def name_task(self, task: asyncio.Task[Any], worker: str) -> None:
        """Say that ``task`` runs ``worker``'s code, so a block in it names the worker."""
        self._owners[task] = worker

    def forget_task(self, task: asyncio.Task[Any]) -> None:
        self._owners.pop(task, None)

    @property
    def lag(self) -> float:
        """Seconds since the loop last beat."""
        return time.monotonic() - self.last_beat

    async def run(self) -> None:
        """Beat until cancelled; run it as a task in the watched loop."""
        while True:
            now = time.monotonic()
            if now - self.last_beat > self.threshold:
                self._stall = (self.last_beat, now)
            self.last_beat = now
            await asyncio.sleep(BEAT_EVERY)

    def deaf_since(self) -> float:
        """Since when the loop may not have read its sockets: a message it
        takes now may have been sent that long ago. The last beat, or the
        start of a stall that ended just now (the beat may run before the
        callbacks of what the socket buffered during the stall, which all
        come within a turn or two)."""
        now = time.monotonic()
        since = min(now, self.last_beat)
        if self._stall is not None and now - self._stall[1] < STALL_AFTERMATH:
            since = min(since, self._stall[0])
        return since

    def check(self, now: float | None = None) -> None:
        """Look at the loop's last beat; call it from another thread, often."""
        now = time.monotonic() if now is None else now
        beat = self.last_beat
        lag = now - beat
        if self._blocked is None:
            if lag > self.threshold:
                culprit = self._culprit()
                self._blocked = (beat, culprit)
                log.error("event loop blocked", worker=culprit, blocked_for=round(lag, 3))
            return
        if lag <= self.threshold:
            started, culprit = self._blocked
            self._blocked = None
            seconds = max(0.0, beat - started)
            log.warning("event loop unblocked", worker=culprit, blocked_for=round(seconds, 3))
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._on_block, culprit, seconds)

    def _culprit(self) -> str:
        # Read from this thread while the loop's thread is stuck in the task:
        # a dictionary look-up, safe under the GIL.
        task = asyncio.current_task(self._loop)
        if task is None:
            return "(no task: a callback)"
        return self._owners.get(task) or task.get_name()
