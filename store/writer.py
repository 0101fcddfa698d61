"""Batched writes: many rows, one transaction, off the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import aiosqlite
import structlog

log = structlog.get_logger("ctrlplane.store")

# "INSERT ... VALUES (?, ?, ...)": such a statement can take many rows at once.
_INSERT_RE = re.compile(
    r"^(?P<head>\s*INSERT\b.*?\bVALUES\s*)(?P<row>\(\s*\?(?:\s*,\s*\?)*\s*\))\s*$",
    re.IGNORECASE | re.DOTALL,
)
# SQLite's limit on bound parameters per statement (32766 since 3.32), with room.
_MAX_PARAMS = 32000 if sqlite3.sqlite_version_info >= (3, 32) else 999
_MAX_ROWS_PER_STATEMENT = 500

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

    No path leaves the connection inside a transaction: a statement whose
    caller is cancelled still runs to its end in aiosqlite's thread, so it is
    awaited (bounded by the busy timeout) and rolled back before the
    cancellation goes on; a failed COMMIT is rolled back too.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
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
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction of its own on the shared connection.

        Batches and direct writes share one connection, so they take turns:
        a direct write can never end up inside (or roll back with) a batch.
        """
        async with self._lock:
            await self._begin()
            try:
                yield self._db
                await self._to_end("COMMIT")
            except BaseException:
                await self._rollback()
                raise

    async def _begin(self) -> None:
        if self._db.in_transaction:
            # Left open by a fault we did not see: never write inside it.
            await self._rollback()
        try:
            await self._to_end("BEGIN IMMEDIATE")
        except asyncio.CancelledError:
            await self._rollback()  # it began after all, once the lock was free
            raise

    async def _to_end(self, sql: str) -> None:
        await execute_to_end(self._db, sql)

    async def _rollback(self) -> None:
        await roll_back(self._db)

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
                await self._begin()
                try:
                    for sql, rows in batch.items():
                        for statement, params, many in _statements(sql, rows):
                            if many:
                                await self._db.executemany(statement, params)
                            else:
                                await self._db.execute(statement, params)
                    await self._to_end("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
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


def _statements(sql: str, rows: list[Row]) -> list[tuple[str, Sequence[Any], bool]]:
    """``rows`` for ``sql`` as few statements as possible.

    An INSERT of many rows becomes multi-row ``VALUES (...), (...)``
    statements: far less per-row work in SQLite and in the sqlite3 module
    (whose per-row binding holds the GIL the event loop needs). Anything else
    is one ``executemany``. Each item is (statement, parameters, whether
    the parameters are many rows for executemany).
    """
    match = _INSERT_RE.match(sql)
    if match is None or len(rows) < 2:
        return [(sql, rows, True)]
    width = match["row"].count("?")
    per = max(1, min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMS // width))
    out: list[tuple[str, Sequence[Any], bool]] = []
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        statement = match["head"] + ", ".join([match["row"]] * len(chunk))
        out.append((statement, [value for row in chunk for value in row], False))
    return out


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


async def execute_to_end(db: aiosqlite.Connection, sql: str) -> None:
    """Execute ``sql`` on ``db`` and wait for it to end, even if cancelled meanwhile.

    Cancelling the await does not stop aiosqlite's thread: a BEGIN that
    waits on another writer's lock would run later and leave the
    connection inside a transaction, and a COMMIT would still commit. So the
    statement is always awaited to its end (the busy timeout bounds it); a
    cancellation that came meanwhile is raised afterwards, once the caller
    can see the connection's real state and roll back.
    """
    statement = asyncio.ensure_future(db.execute(sql))
    cancelled = False
    while not statement.done():
        try:
            await asyncio.wait([statement])
        except asyncio.CancelledError:
            cancelled = True
    statement.result()
    if cancelled:
        raise asyncio.CancelledError


async def roll_back(db: aiosqlite.Connection) -> None:
    """Roll back whatever transaction ``db`` has open; never raises but cancellation."""
    if not db.in_transaction:
        return
    try:
        await execute_to_end(db, "ROLLBACK")
    except sqlite3.Error as exc:
        log.error("rollback failed", error=str(exc))
