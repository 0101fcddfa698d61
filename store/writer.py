"""Batched writes: many rows, one transaction, off the hot path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import structlog

from ctrlplane.store.types import Database, Executor

log = structlog.get_logger("ctrlplane.store")

Row = Sequence[Any]
SOON = 0.02
"""Least gap between two flushes asked for by flush_soon(), so they batch."""
OnCommit = Callable[[bool], None]
"""Told whether a row was written (True) or dropped unwritten (False)."""


class BatchWriter:
    """Collects rows per statement and writes them in one transaction.

    Callers ``add()`` without awaiting; a background task flushes every
    ``interval`` or as soon as ``max_rows`` are waiting. ``flush()`` writes
    what is waiting now and returns when it is on disk.

    A flush that fails (the file is locked past the busy timeout, the disk is
    full) keeps its rows and tries again on the next round, so nothing is lost
    to a passing fault. While flushes keep failing, rows past ``max_pending``
    are dropped (oldest first) and counted, so a store that is gone for good
    cannot exhaust memory; a healthy store never drops anything, however
    many rows one caller adds at once.

    A row may carry an ``on_commit`` callback, called once its transaction
    has committed (``True``) or the row was dropped (``False``): the actors
    acknowledge a message only after the record of its run is on disk.

    Rows are written through the store's :class:`~ctrlplane.store.types.Database`,
    as multi-row INSERTs where the backend allows; the transactions the
    backend gives leave no connection inside a transaction on any path
    (cancellation, a failed COMMIT).
    """

    def __init__(
        self,
        db: Database,
        *,
        interval: timedelta = timedelta(milliseconds=200),
        max_rows: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self._db = db
        self._interval = interval.total_seconds()
        self._max_rows = max_rows
        self._max_pending = max_pending
        self._pending: dict[str, list[Row]] = {}
        # on_commit callbacks by id() of their row, which the pending lists keep alive.
        self._waiting: dict[int, OnCommit] = {}
        self._count = 0
        self._wake = asyncio.Event()
        self._soon = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="store-batch-writer")

    def add(self, sql: str, row: Row, on_commit: OnCommit | None = None) -> None:
        """Queue ``row`` for ``sql``; it is written within one interval.

        ``on_commit`` is called from the event loop once the row's batch has
        committed (with ``True``), or if the row is dropped (``False``).
        """
        self._pending.setdefault(sql, []).append(row)
        if on_commit is not None:
            self._waiting[id(row)] = on_commit
        self._count += 1
        if self._failing and self._count > self._max_pending:
            self._drop_oldest(1)
        if self._count >= self._max_rows:
            self._wake.set()

    def add_many(self, sql: str, rows: Sequence[Row]) -> None:
        """:meth:`add` for many rows of one statement (none with a callback),
        without a call per row: a sweep's results, a collector's metrics."""
        if not rows:
            return
        self._pending.setdefault(sql, []).extend(rows)
        self._count += len(rows)
        if self._failing and self._count > self._max_pending:
            self._drop_oldest(self._count - self._max_pending)
        if self._count >= self._max_rows:
            self._wake.set()

    def flush_soon(self) -> None:
        """Write what is queued within :data:`SOON` seconds, not at the interval's end.

        Many callers asking at once share one transaction: after a flush
        asked for this way the writer waits :data:`SOON` before the next.
        """
        if not self._soon:
            self._soon = True
            self._wake.set()

    def _drop_oldest(self, n: int) -> None:
        for rows in self._pending.values():
            take = min(n, len(rows))
            if self._waiting:
                for row in rows[:take]:
                    callback = self._waiting.pop(id(row), None)
                    if callback is not None:
                        _call(callback, False)
            del rows[:take]
            self._count -= take
            self.dropped += take
            n -= take
            if n <= 0:
                return

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        """A transaction of its own, for a write that must be on disk when it returns.

        Exclusive (see :meth:`Database.transaction`): on SQLite, batches and
        direct writes share one connection and take turns, so a direct write
        can never end up inside (or roll back with) a batch.
        """
        async with self._db.transaction() as tx:
            yield tx

    async def flush(self) -> None:
        """Write everything queued so far, in one transaction.

        The write itself is shielded: a caller cancelled half-way (a stop,
        a timeout) does not abandon a transaction whose COMMIT may already be
        on its way, which would write the rows twice or lose them.
        """
        if not self._count and not self._lock.locked():
            return
        # Taking the lock inside means a flush also waits for one in progress.
        write = asyncio.ensure_future(self._flush_now())
        write.add_done_callback(_retrieve)
        await asyncio.shield(write)

    async def _flush_now(self) -> None:
        async with self._lock:
            if not self._count:
                return
            batch, self._pending, count = self._pending, {}, self._count
            waiting, self._waiting = self._waiting, {}
            self._count = 0
            try:
                async with self._db.transaction(exclusive=False) as tx:
                    for sql, rows in batch.items():
                        await tx.executemany(sql, rows)
            except BaseException:
                # Put the rows back in front of anything added meanwhile.
                for sql, rows in batch.items():
                    rows.extend(self._pending.get(sql, []))
                    self._pending[sql] = rows
                waiting.update(self._waiting)
                self._waiting = waiting
                self._count += count
                self._failing = True
                if self._count > self._max_pending:
                    self._drop_oldest(self._count - self._max_pending)
                raise
            self._failing = False
            self.written += count
            for callback in waiting.values():
                _call(callback, True)

    async def _loop(self) -> None:
        while True:
            # Not asyncio.wait_for: on 3.11 it swallows a cancel (close())
            # that lands in the loop iteration the event is set in, and this
            # loop would then run on forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            urgent, self._soon = self._soon, False
            try:
                await self.flush()
            except Exception as exc:  # keep the rows; try again next round
                log.warning("batch write failed; will retry", error=str(exc), pending=self._count)
            if urgent:
                await asyncio.sleep(SOON)

    async def close(self) -> None:
        """Stop the background task and write what is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()


def _call(callback: OnCommit, written: bool) -> None:
    try:
        callback(written)
    except Exception:
        # A caller's bug must not undo a commit or stop the writer.
        log.exception("on_commit callback failed")


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark the outcome of a write whose caller was cancelled as seen; the
    rows of a failed one are back in the queue and the next flush says why."""
    if not task.cancelled():
        task.exception()
