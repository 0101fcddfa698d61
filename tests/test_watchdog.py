"""LoopWatchdog: a blocked loop is noticed from another thread and its task named."""

from __future__ import annotations

import asyncio
import threading
import time

from ctrlplane.actors.watchdog import LoopWatchdog
from tests.helpers import wait_for


async def test_a_block_is_named_and_reported_once_the_loop_turns() -> None:
    loop = asyncio.get_running_loop()
    reported: list[tuple[str, float]] = []
    watchdog = LoopWatchdog(loop, lambda w, s: reported.append((w, s)), threshold=0.3)
    beat = asyncio.create_task(watchdog.run())
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            watchdog.check()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def culprit() -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - blocks the loop on purpose

    try:
        await asyncio.sleep(0.2)  # let the first beat happen
        task = asyncio.create_task(culprit(), name="runner-x-0")
        watchdog.name_task(task, "greedy")
        await task
        await wait_for(lambda: bool(reported))
    finally:
        stop.set()
        watcher.join(5)
        beat.cancel()
    ((worker, seconds),) = reported
    assert worker == "greedy"
    assert 0.6 <= seconds < 5


async def test_a_responsive_loop_reports_nothing() -> None:
    reported: list[tuple[str, float]] = []
    watchdog = LoopWatchdog(asyncio.get_running_loop(), lambda w, s: reported.append((w, s)))
    beat = asyncio.create_task(watchdog.run())
    try:
        for _ in range(10):
            await asyncio.sleep(0.02)
            watchdog.check()
    finally:
        beat.cancel()
    assert reported == []
