"""A registered worker's settings, read once from the worker object and checked."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

from msgspec import Struct, structs

from ctrlplane.actors.errors import InvalidScheduleError, InvalidWorkerError
from ctrlplane.actors.info import Scope, WorkerKind
from ctrlplane.actors.schedule import CronSchedule, IntervalSchedule, Schedule, cron_schedule
from ctrlplane.actors.types import Worker
from ctrlplane.bus.messages import Tick
from ctrlplane.bus.subjects import is_valid_event_pattern, is_valid_token

DEFAULT_EVENT_TIMEOUT = timedelta(seconds=60)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_PREFETCH = 256
MAX_NAME_LENGTH = 64
# A tick further ahead than this many intervals was not made by a ticker
# (every ticker publishes the slot that has begun), allowing for clock skew.
TICK_LEAD = 2
CLOCK_SKEW = timedelta(seconds=5)
# A tick older than this (or four intervals, if longer) outlived the tick
# stream's age limit: nobody published it lately. Newer stale ticks are
# legitimate after an outage and coalesce.
TICK_MAX_AGE = timedelta(days=7)
# Slots beyond this cannot be placed on a float time line exactly.
_MAX_SLOT = 2**53


class WorkerSpec(Struct, frozen=True, kw_only=True):
    """The normalised settings of one worker.

    ``offset`` shifts the worker's slot boundaries by a deterministic amount
    derived from its name, so workers with the same interval do not all fire
    at the same instant, yet every process computes the same slots.

    ``node`` is the node whose runs this process takes, for a node-scoped
    worker: its ticks, consumers and slot records are that node's own. It is
    set by the scheduler (:meth:`on_node`), which knows its process's node.

    ``cron`` is set for a worker with a cron ``schedule`` instead of an
    interval (``interval`` is then 0): its slots are the occurrences.
    """

    name: str
    interval: timedelta
    subscriptions: tuple[str, ...]
    timeout: timedelta
    max_attempts: int
    concurrency: int
    prefetch: int
    offset: timedelta
    scope: Scope = Scope.CLUSTER
    node: str | None = None
    cron: CronSchedule | None = None

    def on_node(self, node: str) -> WorkerSpec:
        """This spec as run by a process of ``node``: unchanged for a
        cluster-scoped worker, bound to ``node`` for a node-scoped one."""
        if self.scope is Scope.CLUSTER:
            return self
        return structs.replace(self, node=node)

    @property
    def kind(self) -> WorkerKind:
        if self.interval > timedelta(0) or self.cron is not None:
            return WorkerKind.PERIODIC
        return WorkerKind.EVENT if self.subscriptions else WorkerKind.ONCE

    @property
    def interval_s(self) -> float:
        return self.interval.total_seconds()

    @property
    def schedule(self) -> Schedule | None:
        """When its slots begin; None for an event-driven or one-shot worker."""
        if self.cron is not None:
            return self.cron
        if self.interval > timedelta(0):
            return IntervalSchedule(interval=self.interval, offset=self.offset)
        return None

    def slot_at(self, t: float) -> int:
        """The slot that contains epoch time ``t``."""
        return self._periodic().slot_at(t)

    def slot_start(self, slot: int) -> float:
        """The epoch time at which ``slot`` begins."""
        return self._periodic().slot_start(slot)

    def slot_start_dt(self, slot: int) -> datetime:
        return datetime.fromtimestamp(self.slot_start(slot), UTC)

    def slot_length(self, slot: int) -> timedelta:
        """How long ``slot`` lasts: the interval, or the time to the next occurrence.

        It goes out as a tick's ``interval``, which is what tells a stale
        tick (its next slot has begun) from a current one.
        """
        if self.cron is None:
            return self.interval
        return timedelta(seconds=self.cron.next_slot(slot) - slot)

    def _periodic(self) -> Schedule:
        schedule = self.schedule
        if schedule is None:
            raise ValueError(f"worker {self.name!r} is not periodic: it has no slots")
        return schedule

    def tick_problem(self, tick: Tick, now: float) -> str | None:
        """Why ``tick`` cannot be a tick of this worker at epoch time ``now``; None if it can.

        A tick names its worker, and its slot begins at its ``scheduled``
        time (less an offset under one interval); it is refused when any of
        that disagrees, when it names another node than this run's (none for
        a cluster-scoped worker), when its slot lies more than
        :data:`TICK_LEAD` intervals ahead of ``now``, or when it is older than
        :data:`TICK_MAX_AGE` (or four intervals): a forged or corrupted tick
        is dead-lettered, never run.
        """
        if tick.worker != self.name:
            return f"tick names worker {tick.worker!r} but came on the subject of {self.name!r}"
        if tick.node != self.node:
            # Each node's ticks are its own: a tick of another node (or a
            # cluster tick for a node-scoped worker) would run that node's
            # slot here, where its local state is not.
            theirs = "the cluster" if tick.node is None else f"node {tick.node!r}"
            ours = "the cluster" if self.node is None else f"node {self.node!r}"
            return f"tick is for {theirs} but this run is for {ours}"
        interval = tick.interval.total_seconds()
        if interval <= 0:
            return f"tick interval must be positive, got {tick.interval}"
        if not -_MAX_SLOT < tick.slot < _MAX_SLOT:
            return f"tick slot {tick.slot} is out of range"
        scheduled = tick.scheduled.timestamp()
        if self.cron is not None:
            # Its slot must be one of this worker's own occurrences, and its
            # interval the time to the next: a cron tick is checked against
            # the schedule, not against itself.
            problem = _cron_tick_problem(self.cron, tick)
            if problem is not None:
                return problem
        # One second of slack for float rounding of big slot numbers.
        elif not -1 <= scheduled - tick.slot * interval < interval + 1:
            return (
                f"tick slot {tick.slot} of {tick.interval} does not begin at "
                f"{tick.scheduled.isoformat()}"
            )
        lead = TICK_LEAD * max(self.interval_s, interval) + CLOCK_SKEW.total_seconds()
        if scheduled - now > lead:
            return (
                f"tick slot {tick.slot} begins {scheduled - now:.0f}s from now; "
                f"at most {TICK_LEAD} intervals ahead are accepted"
            )
        period = self.interval if self.cron is None else tick.interval
        oldest = max(TICK_MAX_AGE, 4 * period).total_seconds()
        if now - scheduled > oldest:
            return (
                f"tick slot {tick.slot} began {now - scheduled:.0f}s ago; "
                f"ticks older than {oldest:.0f}s are refused"
            )
        return None


def _cron_tick_problem(cron: CronSchedule, tick: Tick) -> str | None:
    try:
        if not cron.is_slot(tick.slot):
            return f"tick slot {tick.slot} is not an occurrence of {cron.describe()}"
        following = cron.next_slot(tick.slot)
    except InvalidScheduleError as exc:
        return f"tick slot {tick.slot}: {exc.reason}"
    if abs(tick.scheduled.timestamp() - tick.slot) >= 1:
        return f"tick slot {tick.slot} does not begin at {tick.scheduled.isoformat()}"
    if abs(tick.interval.total_seconds() - (following - tick.slot)) >= 1:
        return (
            f"tick interval {tick.interval} is not the time from occurrence {tick.slot} "
            f"to the next ({following - tick.slot}s)"
        )
    return None


def _offset(name: str, interval: timedelta) -> timedelta:
    if interval <= timedelta(0):
        return timedelta(0)
    micros = int(interval.total_seconds() * 1_000_000)
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    # Whole milliseconds: slot boundaries land on readable times in logs.
    return timedelta(milliseconds=(digest % max(micros, 1)) // 1000)


def spec_of(worker: object) -> WorkerSpec:
    """Read and check ``worker``'s settings; raises :class:`InvalidWorkerError`."""
    name = getattr(worker, "name", None)
    if not isinstance(name, str):
        raise InvalidWorkerError(worker, "has no 'name' string attribute")
    if not is_valid_token(name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidWorkerError(
            name,
            "invalid name: use 1 to 64 lowercase letters, digits, '-' and '_' "
            "(it appears in NATS subjects)",
        )
    interval = getattr(worker, "interval", None)
    if not isinstance(interval, timedelta):
        raise InvalidWorkerError(name, "'interval' must be a datetime.timedelta")
    if interval < timedelta(0):
        raise InvalidWorkerError(name, f"negative interval {interval}")
    if interval > timedelta(0) and interval < timedelta(milliseconds=100):
        raise InvalidWorkerError(name, f"interval {interval} is below the 100 ms minimum")
    cron = _cron_of(name, worker, interval)
    run = getattr(worker, "run", None)
    if not callable(run):
        raise InvalidWorkerError(name, "has no async 'run(ctx)' method")
    if not isinstance(worker, Worker):  # pragma: no cover - covered by the checks above
        raise InvalidWorkerError(name, "does not implement the Worker protocol")

    subscriptions = getattr(worker, "subscriptions", ())
    if isinstance(subscriptions, str) or not all(isinstance(s, str) for s in subscriptions):
        raise InvalidWorkerError(name, "'subscriptions' must be a tuple of event type strings")
    subscriptions = tuple(subscriptions)
    for pattern in subscriptions:
        if not is_valid_event_pattern(pattern):
            raise InvalidWorkerError(name, f"invalid subscription {pattern!r}")

    default_timeout = interval if interval > timedelta(0) else DEFAULT_EVENT_TIMEOUT
    if cron is not None:
        # A run should be over before the next occurrence could begin.
        default_timeout = cron.shortest_gap(time.time())
    timeout = getattr(worker, "timeout", None) or default_timeout
    if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
        raise InvalidWorkerError(name, "'timeout' must be a positive datetime.timedelta")

    max_attempts = getattr(worker, "max_attempts", DEFAULT_MAX_ATTEMPTS)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidWorkerError(name, "'max_attempts' must be an int >= 1")
    concurrency = getattr(worker, "concurrency", 1)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidWorkerError(name, "'concurrency' must be an int >= 1")

    prefetch = getattr(worker, "prefetch", DEFAULT_PREFETCH)
    if not isinstance(prefetch, int) or prefetch < 1:
        raise InvalidWorkerError(name, "'prefetch' must be an int >= 1")

    scope = getattr(worker, "scope", Scope.CLUSTER)
    try:
        scope = Scope(scope)
    except ValueError:
        problem = f"'scope' must be 'cluster' or 'node', not {scope!r}"
        raise InvalidWorkerError(name, problem) from None
    if scope is Scope.NODE and interval <= timedelta(0) and cron is None and not subscriptions:
        raise InvalidWorkerError(
            name,
            "scope 'node' needs an interval, a schedule or subscriptions: a one-shot worker "
            "already runs once in every process",
        )

    return WorkerSpec(
        name=name,
        interval=interval,
        subscriptions=subscriptions,
        timeout=timeout,
        max_attempts=max_attempts,
        concurrency=concurrency,
        prefetch=max(prefetch, concurrency),
        offset=_offset(name, interval),
        scope=scope,
        cron=cron,
    )


def _cron_of(name: str, worker: object, interval: timedelta) -> CronSchedule | None:
    """The worker's cron schedule, if it has one (``schedule`` and ``timezone``
    are optional attributes: workers without them keep their interval)."""
    expression = getattr(worker, "schedule", None)
    timezone = getattr(worker, "timezone", None)
    if expression is None:
        if timezone is not None:
            raise InvalidWorkerError(name, "'timezone' is set but 'schedule' is not")
        return None
    if interval != timedelta(0):
        raise InvalidWorkerError(
            name,
            "set 'interval' or 'schedule', not both: a worker with a cron 'schedule' "
            "has interval timedelta(0)",
        )
    if not isinstance(expression, str):
        raise InvalidWorkerError(name, "'schedule' must be a cron expression string")
    if timezone is not None and not isinstance(timezone, str):
        raise InvalidWorkerError(name, "'timezone' must be an IANA time zone name string")
    try:
        return cron_schedule(expression, timezone or "UTC")
    except InvalidScheduleError as exc:
        problem = f"invalid '{exc.field}' {exc.value!r}: {exc.reason}"
        raise InvalidWorkerError(name, problem) from exc
