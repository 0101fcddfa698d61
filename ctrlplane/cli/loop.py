"""The event loop of one command, whose shutdown is bounded.

``asyncio.run`` cancels the tasks left at the end and then waits for them,
and for the default executor's threads, without limit: one worker that
swallows ``CancelledError`` (or sleeps in a thread) keeps the process alive
long after the control plane stopped. Here the leftovers get a short bound;
what still runs after it is abandoned and reported, and the caller may end
the process at once (``os._exit``) since nothing it owns is left open.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

LEFTOVER_WAIT = 0.1
"""Seconds the tasks and threads left at the end get to finish once cancelled."""

log = structlog.get_logger("ctrlplane.cli")


class Loop:
    """Runs one coroutine; Ctrl-C cancels it and surfaces as ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self.abandoned: list[str] = []
        """What was still running when :meth:`close` gave up on it."""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end.

        Raises:
            KeyboardInterrupt: SIGINT arrived while it ran (it was cancelled
                first, so its ``finally`` blocks ran).
        """
        loop = self._loop
        asyncio.set_event_loop(loop)
        main = loop.create_task(coro)
        interrupted = False

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            main.cancel()

        # A command that handles signals itself (`run`) replaces this handler.
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return loop.run_until_complete(main)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    def close(self, within: float = LEFTOVER_WAIT) -> bool:
        """Cancel what is left, wait at most ``within`` seconds, close the loop.

        Returns:
            Whether everything ended; if not, :attr:`abandoned` says what did
            not, and only ``os._exit`` ends the process without waiting for it.
        """
        loop = self._loop
        if loop.is_closed():
            return not self.abandoned
        threads_before = {t for t in threading.enumerate() if not t.daemon}
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        deadline = loop.time() + within
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=within))
        stuck = [t for t in tasks if not t.done()]
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("task ended with an error at exit", task=task.get_name())
        remaining = max(0.0, deadline - loop.time())
        loop.run_until_complete(_bounded(loop.shutdown_asyncgens(), remaining))
        remaining = max(0.0, deadline - loop.time())
        executor_done = loop.run_until_complete(
            _bounded(loop.shutdown_default_executor(), remaining)
        )
        self.abandoned = [f"task {t.get_name()}: {t.get_coro()!r}" for t in stuck]
        if not executor_done:
            self.abandoned.append("a thread of the default executor")
        main = threading.main_thread()
        self.abandoned += [
            f"thread {t.name}"
            for t in threads_before
            if t is not main and t.is_alive() and not t.daemon
        ]
        # Closing a loop with pending tasks is allowed: they are never resumed.
        loop.close()
        asyncio.set_event_loop(None)
        if self.abandoned:
            log.warning(
                "abandoned at exit: it ignored cancellation", what=self.abandoned, waited=within
            )
        return not self.abandoned


async def _bounded(aw: Coroutine[Any, Any, None], within: float) -> bool:
    try:
        async with asyncio.timeout(max(within, 0.01)):
            await aw
    except TimeoutError:
        return False
    return True
