"""When a periodic worker's slots begin: every interval, or at each cron occurrence.

A slot is an integer that every process computes alike from the clock, so
one tick per ``worker/slot`` (the ``Nats-Msg-Id``) is one run per slot
across the cluster. For an :class:`IntervalSchedule` the slot is the number
of whole intervals since the epoch (shifted by an offset); for a
:class:`CronSchedule` it is the occurrence's epoch second, which is unique
and increasing whatever the time zone and its DST changes do.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from msgspec import Struct

from ctrlplane.actors.errors import InvalidScheduleError

if TYPE_CHECKING:
    from ctrlplane.actors.context import RunContext
    from ctrlplane.actors.types import Worker

CATCH_UP = timedelta(seconds=30)
"""How much older than one interval a slot's tick may be and still be published."""
CRON_CATCH_UP = timedelta(minutes=1)
"""How long after a cron occurrence a ticker (one that just started, or whose
loop was held up) still publishes it: a restart within a minute of 02:30
still runs the 02:30 job; one an hour later does not run it at 03:30."""
# Cron slots are epoch seconds; beyond these no occurrence is looked for
# (datetime and croniter work on years 1 to 9999, well inside them).
_MIN_CRON_SLOT = 0
_MAX_CRON_SLOT = 2**35
# The gaps looked at to find a cron schedule's shortest one.
_GAPS_SAMPLED = 16


class IntervalSchedule(Struct, frozen=True, kw_only=True):
    """A slot every ``interval``, its boundaries shifted by ``offset``."""

    interval: timedelta
    offset: timedelta = timedelta(0)

    @property
    def horizon(self) -> timedelta:
        """How long after its start a slot's tick is still published."""
        return self.interval + CATCH_UP

    def slot_at(self, t: float) -> int:
        """The slot that contains epoch time ``t``."""
        return math.floor((t - self.offset.total_seconds()) / self.interval.total_seconds())

    def slot_start(self, slot: int) -> float:
        """The epoch time at which ``slot`` begins."""
        return slot * self.interval.total_seconds() + self.offset.total_seconds()

    def next_slot(self, slot: int) -> int:
        """The slot after ``slot``."""
        return slot + 1

    def prev_slot(self, slot: int) -> int:
        """The slot before ``slot``."""
        return slot - 1


class CronSchedule(Struct, frozen=True, kw_only=True):
    """A slot at each occurrence of ``expression`` in ``timezone``.

    Build one with :func:`cron_schedule`, which checks both. The expression
    has five fields (minute to weekday) or six, the sixth being seconds, as
    croniter reads them. Times are local to ``timezone`` and DST is handled
    as croniter does: an occurrence in the hour skipped in spring runs at
    the first time after it (02:30 runs at 03:00), and one in the hour
    repeated in autumn runs in both passes (02:30 runs at 02:30 summer time
    and again at 02:30 winter time), each a slot of its own.
    """

    expression: str
    timezone: str = "UTC"

    @property
    def horizon(self) -> timedelta:
        """How long after its start an occurrence's tick is still published."""
        return CRON_CATCH_UP

    def slot_at(self, t: float) -> int:
        """The last occurrence at or before epoch time ``t``, as its epoch second."""
        # Occurrences fall on whole seconds: the last one before the next
        # whole second is the last one at or before t.
        return self._step(math.floor(t) + 1, forward=False)

    def slot_start(self, slot: int) -> float:
        """The epoch time at which ``slot`` begins: the slot itself."""
        return float(slot)

    def next_slot(self, slot: int) -> int:
        """The first occurrence after ``slot``."""
        return self._step(slot, forward=True)

    def prev_slot(self, slot: int) -> int:
        """The last occurrence before ``slot``."""
        return self._step(slot, forward=False)

    def is_slot(self, slot: int) -> bool:
        """Whether ``slot`` is an occurrence of this schedule."""
        if not _MIN_CRON_SLOT < slot < _MAX_CRON_SLOT:
            return False
        return self.next_slot(slot - 1) == slot

    def shortest_gap(self, after: float) -> timedelta:
        """The shortest time between two of the occurrences following ``after``."""
        slot = self.slot_at(after)
        gaps = []
        for _ in range(_GAPS_SAMPLED):
            following = self.next_slot(slot)
            gaps.append(following - slot)
            slot = following
        return timedelta(seconds=min(gaps))

    def describe(self) -> str:
        """``30 2 * * * (Europe/Berlin)``."""
        return f"{self.expression} ({self.timezone})"

    def _step(self, epoch: int, *, forward: bool) -> int:
        if not _MIN_CRON_SLOT <= epoch <= _MAX_CRON_SLOT:
            raise InvalidScheduleError("schedule", self.expression, f"time {epoch} is out of range")
        # croniter (and dateutil) cost a tenth of a second to import: only
        # a process with a cron worker pays for it.
        from croniter import CroniterError, croniter

        start = datetime.fromtimestamp(epoch, ZoneInfo(self.timezone))
        try:
            it = croniter(self.expression, start)
            found = it.get_next(datetime) if forward else it.get_prev(datetime)
        except CroniterError as exc:
            raise InvalidScheduleError("schedule", self.expression, str(exc)) from exc
        return int(found.timestamp())


def cron_schedule(expression: str, timezone: str = "UTC") -> CronSchedule:
    """A checked :class:`CronSchedule`.

    Raises:
        InvalidScheduleError: the expression or the time zone is not valid
            (``field`` says which), or the expression never occurs.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidScheduleError("schedule", expression, "not a non-empty string")
    problem = timezone_problem(timezone)
    if problem is not None:
        raise InvalidScheduleError("timezone", timezone, problem)
    zone = ZoneInfo(timezone)
    from croniter import CroniterError, croniter

    fields = expression.split()
    if not expression.startswith("@") and len(fields) not in (5, 6):
        raise InvalidScheduleError(
            "schedule",
            expression,
            f"has {len(fields)} fields; use 5 (minute hour day month weekday) or 6 (then seconds)",
        )
    try:
        it = croniter(expression, datetime.now(UTC).astimezone(zone))
        # An expression that never matches (February 30th) fails here, not
        # later in the ticker.
        it.get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidScheduleError("schedule", expression, str(exc) or type(exc).__name__) from exc
    return CronSchedule(expression=expression, timezone=timezone)


class _OnSchedule:
    """A worker run at the occurrences of a cron expression instead of its interval."""

    interval = timedelta(0)

    def __init__(self, worker: Worker, expression: str, timezone: str) -> None:
        self._worker = worker
        self.name = worker.name
        self.schedule = expression
        self.timezone = timezone

    def __getattr__(self, attribute: str) -> object:
        # Its other settings (scope, timeout, subscriptions) stay the worker's.
        return getattr(self._worker, attribute)

    async def run(self, ctx: RunContext) -> None:
        await self._worker.run(ctx)


def on_schedule(worker: Worker, expression: str, timezone: str = "UTC") -> Worker:
    """``worker`` run at each occurrence of ``expression`` (in ``timezone``)
    rather than every ``worker.interval``: for a worker whose class has no
    ``schedule`` attribute of its own, such as a built-in one set from config.
    The expression is checked when the result is registered."""
    return _OnSchedule(worker, expression, timezone)


def timezone_problem(timezone: object) -> str | None:
    """Why ``timezone`` is not an IANA time zone name this system knows; None if it is."""
    if not isinstance(timezone, str) or not timezone:
        return "an IANA time zone name is a non-empty string"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return "not an IANA time zone name (e.g. 'Europe/Berlin')"
    return None


Schedule = IntervalSchedule | CronSchedule
"""Either kind of schedule."""
