"""WorkerSpec.tick_problem: which ticks a worker accepts (issue 9), without NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ctrlplane.actors.spec import WorkerSpec, spec_of
from ctrlplane.bus import Tick


class Minutely:
    name = "minutely"
    interval = timedelta(minutes=1)

    async def run(self, ctx: object) -> None:
        return None


SPEC: WorkerSpec = spec_of(Minutely())
NOW = 1_800_000_000.0


def _tick(slot: int | None = None, **changes: object) -> Tick:
    slot = SPEC.slot_at(NOW) if slot is None else slot
    fields: dict[str, object] = {"worker": SPEC.name, "slot": slot, "interval": SPEC.interval}
    fields.update(changes)
    if "scheduled" not in fields:
        fields["scheduled"] = SPEC.slot_start_dt(slot)
    return Tick(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("back", [0, 1, 2, 60 * 24 * 6])
def test_ticks_a_ticker_makes_are_accepted(back: int) -> None:
    # The current slot, and stale ones an outage left behind (they coalesce).
    assert SPEC.tick_problem(_tick(SPEC.slot_at(NOW) - back), NOW) is None


def test_the_next_slot_is_accepted_despite_clock_skew() -> None:
    assert SPEC.tick_problem(_tick(SPEC.slot_at(NOW) + 1), NOW) is None


@pytest.mark.parametrize(
    ("tick", "reason"),
    [
        (_tick(worker="other"), "names worker 'other'"),
        (_tick(slot=2**70, scheduled=datetime.now(UTC)), "out of range"),
        (_tick(scheduled=datetime(2026, 1, 1, tzinfo=UTC)), "does not begin at"),
        (_tick(interval=timedelta(0)), "must be positive"),
        (_tick(SPEC.slot_at(NOW) + 10), "at most 2 intervals ahead"),
        (_tick(SPEC.slot_at(NOW) - 60 * 24 * 8), "older than"),
    ],
)
def test_forged_ticks_are_refused_with_a_reason(tick: Tick, reason: str) -> None:
    problem = SPEC.tick_problem(tick, NOW)
    assert problem is not None and reason in problem
