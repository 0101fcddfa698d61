"""Interval and cron schedules: slots computed from an injected time, across DST changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctrlplane.actors.errors import InvalidScheduleError
from ctrlplane.actors.info import Scope, WorkerKind
from ctrlplane.actors.schedule import (
    CronSchedule,
    IntervalSchedule,
    cron_schedule,
    on_schedule,
    timezone_problem,
)
from ctrlplane.actors.spec import spec_of

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _at(zone: ZoneInfo, *local: int, fold: int = 0) -> float:
    return datetime(*local, tzinfo=zone, fold=fold).timestamp()  # type: ignore[arg-type,misc]


def _local(zone: ZoneInfo, slot: int) -> str:
    return datetime.fromtimestamp(slot, zone).isoformat()


def _occurrences(schedule: CronSchedule, after: float, count: int) -> list[int]:
    slot = schedule.slot_at(after)
    found = []
    for _ in range(count):
        slot = schedule.next_slot(slot)
        found.append(slot)
    return found


def test_an_interval_schedule_is_floor_division_shifted_by_its_offset() -> None:
    s = IntervalSchedule(interval=timedelta(seconds=10), offset=timedelta(seconds=3))
    assert s.slot_at(102.9) == 9 and s.slot_at(103.0) == 10
    assert s.slot_start(10) == 103.0
    assert (s.next_slot(10), s.prev_slot(10)) == (11, 9)
    assert s.horizon == timedelta(seconds=40)


def test_a_cron_slot_is_the_epoch_second_of_its_occurrence() -> None:
    s = cron_schedule("*/15 * * * *")
    t = datetime(2026, 11, 30, 10, 7, 30, tzinfo=UTC).timestamp()
    slot = s.slot_at(t)
    assert slot == datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp()
    assert s.slot_start(slot) == float(slot)
    assert s.next_slot(slot) == slot + 900 and s.prev_slot(slot) == slot - 900
    # At the occurrence itself the slot is that occurrence, not the one before.
    assert s.slot_at(float(slot)) == slot and s.slot_at(slot - 0.001) == slot - 900
    assert s.is_slot(slot) and not s.is_slot(slot + 60)


def test_seconds_are_the_sixth_field() -> None:
    s = cron_schedule("* * * * * */5")
    slot = s.slot_at(1_800_000_003.5)
    assert slot == 1_800_000_000
    assert s.next_slot(slot) == 1_800_000_005
    assert s.shortest_gap(1_800_000_000) == timedelta(seconds=5)


def test_spring_forward_runs_the_skipped_time_at_the_first_time_after_it() -> None:
    # Berlin, 29 March 2026: 02:00 jumps to 03:00. The 02:30 job runs at 03:00.
    s = cron_schedule("30 2 * * *", "Europe/Berlin")
    runs = _occurrences(s, _at(BERLIN, 2026, 3, 27, 12, 0), 4)
    assert [_local(BERLIN, r) for r in runs] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # 02:30 winter time to 03:00 summer time: 23.5 hours of real time.
    assert runs[1] - runs[0] == 23 * 3600 + 1800


def test_fall_back_runs_the_repeated_time_twice() -> None:
    # Berlin, 25 October 2026: 03:00 goes back to 02:00; 02:30 happens twice.
    s = cron_schedule("30 2 * * *", "Europe/Berlin")
    runs = _occurrences(s, _at(BERLIN, 2026, 10, 24, 12, 0), 3)
    assert [_local(BERLIN, r) for r in runs] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # Two slots, an hour apart: each its own run, each de-duplicated alone.
    assert runs[1] - runs[0] == 3600


def test_new_york_hourly_keeps_real_hours_across_both_changes() -> None:
    s = cron_schedule("0 * * * *", "America/New_York")
    spring = _occurrences(s, _at(NEW_YORK, 2026, 3, 8, 0, 30), 4)
    assert [b - a for a, b in itertools.pairwise(spring)] == [3600, 3600, 3600]
    assert [_local(NEW_YORK, r)[11:] for r in spring] == [
        "01:00:00-05:00",
        "03:00:00-04:00",
        "04:00:00-04:00",
        "05:00:00-04:00",
    ]
    fall = _occurrences(s, _at(NEW_YORK, 2026, 11, 1, 0, 30), 4)
    assert [b - a for a, b in itertools.pairwise(fall)] == [3600, 3600, 3600]
    assert [_local(NEW_YORK, r)[11:] for r in fall] == [
        "01:00:00-04:00",
        "01:00:00-05:00",
        "02:00:00-05:00",
        "03:00:00-05:00",
    ]


@pytest.mark.parametrize(
    "expression", ["30 2 * * *", "*/30 * * * *", "0 * * * *", "15 1-3 * * 0", "0 0 1 * *"]
)
@given(offset=st.integers(min_value=-3 * 86_400, max_value=3 * 86_400))
def test_slots_are_consistent_around_dst_changes(expression: str, offset: int) -> None:
    # Every process computes the same slot from the clock: the occurrence at
    # or before it, whose successor lies after it, and that is an occurrence.
    s = cron_schedule(expression, "Europe/Berlin")
    for change in (_at(BERLIN, 2026, 3, 29, 2, 0), _at(BERLIN, 2026, 10, 25, 2, 0)):
        t = change + offset + 0.25
        slot = s.slot_at(t)
        assert slot <= t < s.next_slot(slot)
        assert s.is_slot(slot)
        assert s.prev_slot(s.next_slot(slot)) == slot


@pytest.mark.parametrize(
    ("expression", "timezone", "field"),
    [
        ("61 * * * *", "UTC", "schedule"),
        ("* * *", "UTC", "schedule"),
        ("* * * * * * * *", "UTC", "schedule"),
        ("", "UTC", "schedule"),
        ("0 0 30 2 *", "UTC", "schedule"),
        ("* * * * *", "Mars/Olympus", "timezone"),
        ("* * * * *", "../../etc/passwd", "timezone"),
        ("* * * * *", "", "timezone"),
    ],
)
def test_an_invalid_schedule_names_its_field(expression: str, timezone: str, field: str) -> None:
    with pytest.raises(InvalidScheduleError) as caught:
        cron_schedule(expression, timezone)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} ")


def test_timezone_problem() -> None:
    assert timezone_problem("Europe/Berlin") is None
    assert timezone_problem("UTC") is None
    assert timezone_problem("Nowhere/Land") is not None
    assert timezone_problem(3) is not None


class Sweeper:
    """A built-in-like worker with an interval and settings of its own."""

    name = "sweeper"
    interval = timedelta(minutes=5)
    scope = "node"
    timeout = timedelta(seconds=7)

    def __init__(self) -> None:
        self.ran: list[object] = []

    async def run(self, ctx: object) -> None:
        self.ran.append(ctx)


async def test_on_schedule_puts_a_worker_on_a_cron_keeping_its_other_settings() -> None:
    worker = Sweeper()
    scheduled = on_schedule(worker, "0 3 * * *", "Europe/Berlin")
    spec = spec_of(scheduled)
    assert spec.kind is WorkerKind.PERIODIC and spec.interval == timedelta(0)
    assert spec.cron == CronSchedule(expression="0 3 * * *", timezone="Europe/Berlin")
    assert (spec.scope, spec.timeout) == (Scope.NODE, timedelta(seconds=7))
    await scheduled.run("ctx")  # type: ignore[arg-type]
    assert worker.ran == ["ctx"]
