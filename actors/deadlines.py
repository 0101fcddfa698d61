"""Timeouts for many awaits with one watcher task instead of one timer each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

STALL = 0.5
"""A watcher turn this much late means the loop was blocked, not busy."""


class DeadlineExceeded(TimeoutError):
    """An await under :meth:`Deadlines.within` ran past its timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"timed out after {timeout:g}s")


class Deadlines:
    """Cancels awaits that run past their timeout, checking every ``resolution`` seconds.

    ``asyncio.timeout`` arms and cancels a timer per await; a worker handling
    thousands of messages, or a sweep of thousands of checks, would pay that
    each time. Here each await only registers its deadline, and one task
    (:meth:`watch`, run it beside) cancels whatever is late, to within
    ``resolution``. Time during which the loop was blocked (a watcher turn
    more than :data:`STALL` late) is not counted: an await frozen by someone
    else's blocking code is not late for it.
    """

    def __init__(self, resolution: float) -> None:
        self._resolution = resolution
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._time = asyncio.get_running_loop().time

    async def watch(self) -> None:
        """Cancel late awaits until cancelled."""
        last = self._time()
        while True:
            await asyncio.sleep(self._resolution)
            now = self._time()
            stalled = now - last - self._resolution
            last = now
            if stalled > STALL:
                # The loop was blocked (a run that blocks it, say): no await
                # could make progress meanwhile, so no deadline counts it.
                for task in list(self._deadlines):
                    self._deadlines[task] += stalled
            self.cancel_late(now)

    def cancel_late(self, now: float) -> None:
        """Cancel every await whose deadline is past at ``now`` (loop time)."""
        for task, deadline in list(self._deadlines.items()):
            if now >= deadline and task not in self._expired:
                self._expired.add(task)
                task.cancel()

    async def within(self, timeout: float, awaitable: Awaitable[T]) -> T:  # noqa: ASYNC109
        """Await ``awaitable``; raise :class:`DeadlineExceeded` once ``timeout`` is past.

        One await at a time per task. The deadline is dropped the moment the
        await ends, so the watcher's cancel can only land inside it. (``timeout``
        is this method's whole point, hence the ASYNC109 exemption.)
        """
        task = asyncio.current_task()
        assert task is not None
        # Cancels requested before this await (one the task swallowed, say)
        # are not ours to judge: only those made during it can beat the deadline.
        before = task.cancelling()
        self._deadlines[task] = self._time() + timeout
        try:
            try:
                result = await awaitable
            finally:
                del self._deadlines[task]
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # cancelled by someone else: a stop, say
            self._expired.discard(task)
            if task.uncancel() > before:
                # Someone else cancelled it too, in the same turn of the
                # loop as the deadline: theirs wins, never swallowed.
                raise
            raise DeadlineExceeded(timeout) from None
        if task in self._expired:
            # The awaitable swallowed the cancellation and went on: still late.
            self._expired.discard(task)
            if task.uncancel() > before:
                raise asyncio.CancelledError
            raise DeadlineExceeded(timeout)
        return result
