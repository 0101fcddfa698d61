"""Deadlines: many timeouts, one watcher."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ctrlplane.actors.deadlines import DeadlineExceeded, Deadlines


@pytest_asyncio.fixture
async def deadlines() -> AsyncIterator[Deadlines]:
    d = Deadlines(0.01)
    watcher = asyncio.create_task(d.watch())
    try:
        yield d
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_a_quick_await_returns_its_value(deadlines: Deadlines) -> None:
    async def quick() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert await deadlines.within(1.0, quick()) == 7


async def test_a_late_await_is_cancelled_near_its_deadline(deadlines: Deadlines) -> None:
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"timed out after 0\.1s"):
        await deadlines.within(0.1, asyncio.sleep(10))
    assert 0.09 < time.monotonic() - began < 0.5
    # The task is usable afterwards: its cancellation was taken back.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.02)


async def test_one_that_swallows_the_cancel_is_still_late(deadlines: Deadlines) -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)

    with pytest.raises(DeadlineExceeded):
        await deadlines.within(0.05, stubborn())


async def test_a_cancel_from_elsewhere_is_not_a_timeout(deadlines: Deadlines) -> None:
    async def run() -> None:
        await deadlines.within(10.0, asyncio.sleep(10))

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_deadline_does_not_outlive_its_await(deadlines: Deadlines) -> None:
    await deadlines.within(0.05, asyncio.sleep(0))
    await asyncio.sleep(0.1)  # past the old deadline: nothing may cancel us now
    assert await deadlines.within(1.0, asyncio.sleep(0, result="ok")) == "ok"


async def test_a_cancel_in_the_same_turn_as_the_deadline_is_not_swallowed() -> None:
    deadlines = Deadlines(60.0)  # no watcher: the test says when time is up
    waiting = asyncio.Event()

    async def run() -> None:
        waiting.set()
        await deadlines.within(0.0, asyncio.sleep(10))

    task = asyncio.create_task(run())
    await waiting.wait()
    await asyncio.sleep(0)
    # The watcher finds the deadline past and a stop cancels in the same turn.
    deadlines.cancel_late(asyncio.get_running_loop().time())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_cancel_beside_a_swallowed_deadline_is_not_swallowed() -> None:
    deadlines = Deadlines(60.0)
    waiting = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # swallows whatever cancelled it

    async def run() -> None:
        waiting.set()
        await deadlines.within(0.0, stubborn())

    task = asyncio.create_task(run())
    await waiting.wait()
    await asyncio.sleep(0)
    deadlines.cancel_late(asyncio.get_running_loop().time())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_time_the_loop_was_blocked_does_not_count(deadlines: Deadlines) -> None:
    async def bystander() -> str:
        await asyncio.sleep(0.3)
        return "done"

    async def blocker() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.8)  # noqa: ASYNC251 - someone else blocks the loop

    blocking = asyncio.create_task(blocker())
    # 0.5 s of its own: not late, though 0.85 s of wall time pass meanwhile.
    assert await deadlines.within(0.5, bystander()) == "done"
    await blocking


async def test_an_external_cancel_just_before_the_deadline_in_the_same_turn_wins() -> None:
    deadlines = Deadlines(60.0)
    waiting = asyncio.Event()

    async def run() -> None:
        waiting.set()
        await deadlines.within(0.0, asyncio.sleep(10))

    task = asyncio.create_task(run())
    await waiting.wait()
    await asyncio.sleep(0)
    task.cancel()  # a stop first, then the watcher, before the task runs again
    deadlines.cancel_late(asyncio.get_running_loop().time())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_deadline_is_a_timeout_in_a_task_that_swallowed_an_old_cancel() -> None:
    # A task that once swallowed a cancel (a worker ignoring a stop, say)
    # still counts it in cancelling(); a later deadline is a timeout all the
    # same, not a cancel: only cancels requested during the await count.
    deadlines = Deadlines(60.0)
    waiting = asyncio.Event()
    swallowed = asyncio.Event()

    async def run() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # swallowed, no uncancel()
        waiting.set()
        try:
            await deadlines.within(0.0, asyncio.sleep(10))
        except DeadlineExceeded:
            return "timed out"
        return "returned"

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    task.cancel()
    await swallowed.wait()
    await waiting.wait()
    await asyncio.sleep(0)
    deadlines.cancel_late(asyncio.get_running_loop().time())
    async with asyncio.timeout(5):
        assert await task == "timed out"
