"""WorkerSpec: which ticks a worker accepts (issue 9) and its scope (issue 11), without NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctrlplane.actors.errors import InvalidWorkerError
from ctrlplane.actors.info import Scope, WorkerKind
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


class PerNode(Minutely):
    name = "per-node"
    scope = "node"


NODE_SPEC: WorkerSpec = spec_of(PerNode()).on_node("node-a")


def _node_tick(node: str | None) -> Tick:
    slot = NODE_SPEC.slot_at(NOW)
    return Tick(
        worker=NODE_SPEC.name,
        slot=slot,
        scheduled=NODE_SPEC.slot_start_dt(slot),
        interval=NODE_SPEC.interval,
        node=node,
    )


def test_scope_is_cluster_unless_a_worker_says_node() -> None:
    assert SPEC.scope is Scope.CLUSTER and SPEC.on_node("node-a") is SPEC
    assert SPEC.on_node("node-a").node is None
    assert spec_of(PerNode()).scope is Scope.NODE
    assert (spec_of(PerNode()).node, NODE_SPEC.node) == (None, "node-a")


def test_a_node_scoped_worker_takes_only_its_own_nodes_ticks() -> None:
    assert NODE_SPEC.tick_problem(_node_tick("node-a"), NOW) is None
    other = NODE_SPEC.tick_problem(_node_tick("node-b"), NOW)
    assert other == "tick is for node 'node-b' but this run is for node 'node-a'"
    cluster = NODE_SPEC.tick_problem(_node_tick(None), NOW)
    assert cluster == "tick is for the cluster but this run is for node 'node-a'"
    # And a cluster-scoped worker refuses a tick that names a node.
    named = SPEC.tick_problem(_tick(node="node-a"), NOW)
    assert named == "tick is for node 'node-a' but this run is for the cluster"


def test_node_ticks_have_a_deduplication_id_per_node() -> None:
    assert _node_tick("node-a").msg_id == f"per-node/node-a/{NODE_SPEC.slot_at(NOW)}"
    assert _node_tick("node-a").msg_id != _node_tick("node-b").msg_id
    assert _tick().msg_id == f"minutely/{SPEC.slot_at(NOW)}"


class _Scoped:
    interval = timedelta(minutes=1)
    subscriptions: tuple[str, ...] = ()

    def __init__(self, scope: object, interval: timedelta | None = None) -> None:
        self.name = "scoped"
        self.scope = scope
        if interval is not None:
            self.interval = interval

    async def run(self, ctx: object) -> None:
        return None


@pytest.mark.parametrize(
    ("worker", "problem"),
    [
        (_Scoped("host"), "'scope' must be 'cluster' or 'node', not 'host'"),
        (_Scoped(None), "'scope' must be 'cluster' or 'node', not None"),
        (_Scoped("node", timedelta(0)), "a one-shot worker already runs once in every process"),
    ],
)
def test_a_bad_scope_is_refused_with_the_reason(worker: _Scoped, problem: str) -> None:
    with pytest.raises(InvalidWorkerError, match=problem):
        spec_of(worker)


def test_a_node_scoped_event_worker_is_accepted() -> None:
    worker = _Scoped("node", timedelta(0))
    worker.subscriptions = ("instance.*",)
    assert spec_of(worker).scope is Scope.NODE


class Nightly:
    name = "nightly"
    interval = timedelta(0)
    schedule = "30 2 * * *"
    timezone = "Europe/Berlin"

    async def run(self, ctx: object) -> None:
        return None


CRON: WorkerSpec = spec_of(Nightly())
# 12:00 in Berlin on 24 October 2026, the day before the clocks go back.
NOON = datetime(2026, 10, 24, 10, 0, tzinfo=UTC).timestamp()


def _cron_tick(slot: int, **changes: object) -> Tick:
    fields: dict[str, object] = {"worker": CRON.name, "slot": slot}
    fields.update(changes)
    if "scheduled" not in fields:
        fields["scheduled"] = CRON.slot_start_dt(slot)
    if "interval" not in fields:
        fields["interval"] = CRON.slot_length(slot)
    return Tick(**fields)  # type: ignore[arg-type]


def test_a_cron_worker_is_periodic_with_its_schedule() -> None:
    assert CRON.kind is WorkerKind.PERIODIC
    assert CRON.cron is not None and CRON.cron.timezone == "Europe/Berlin"
    assert CRON.interval == timedelta(0)
    # No run may outlast the shortest gap between occurrences.
    assert CRON.timeout <= timedelta(hours=25)


@pytest.mark.parametrize("back", [0, 1, 2, 6])
def test_cron_ticks_a_ticker_makes_are_accepted(back: int) -> None:
    slot = CRON.slot_at(NOON)
    for _ in range(back):
        slot = CRON.cron.prev_slot(slot)  # type: ignore[union-attr]
    assert CRON.tick_problem(_cron_tick(slot), NOON) is None


def test_the_fall_back_nights_two_occurrences_are_both_genuine() -> None:
    first = CRON.cron.next_slot(CRON.slot_at(NOON))  # type: ignore[union-attr]
    second = CRON.cron.next_slot(first)  # type: ignore[union-attr]
    assert second - first == 3600
    assert CRON.slot_length(first) == timedelta(hours=1)
    assert CRON.tick_problem(_cron_tick(second), second + 10) is None


@pytest.mark.parametrize(
    ("tick", "reason"),
    [
        # An interval-style tick, or a slot a minute off the occurrence.
        (_tick(worker="nightly"), "not an occurrence"),
        (_cron_tick(CRON.slot_at(NOON) + 60), "not an occurrence"),
        (_cron_tick(CRON.slot_at(NOON), interval=timedelta(hours=1)), "is not the time"),
        (
            _cron_tick(CRON.slot_at(NOON), scheduled=datetime(2026, 1, 1, tzinfo=UTC)),
            "does not begin at",
        ),
        (_cron_tick(-5, interval=timedelta(days=1)), "not an occurrence"),
        (
            _cron_tick(2**52, interval=timedelta(days=1), scheduled=datetime.now(UTC)),
            "not an occurrence",
        ),
        (_cron_tick(CRON.slot_at(NOON + 10 * 86_400)), "intervals ahead"),
        (_cron_tick(CRON.slot_at(NOON - 30 * 86_400)), "older than"),
    ],
)
def test_forged_cron_ticks_are_refused_with_a_reason(tick: Tick, reason: str) -> None:
    problem = CRON.tick_problem(tick, NOON)
    assert problem is not None and reason in problem, problem


class Misconfigured:
    name = "misconfigured"

    def __init__(self, **settings: object) -> None:
        self.interval = timedelta(0)
        for key, value in settings.items():
            setattr(self, key, value)

    async def run(self, ctx: object) -> None:
        return None


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"schedule": "0 * * * *", "interval": timedelta(minutes=5)}, "not both"),
        ({"schedule": "0 25 * * *"}, "invalid 'schedule' '0 25 * * *'"),
        ({"schedule": "0 * * * *", "timezone": "Mars/Olympus"}, "invalid 'timezone'"),
        ({"schedule": 5}, "'schedule' must be a cron expression"),
        ({"timezone": "UTC"}, "'timezone' is set but 'schedule' is not"),
    ],
)
def test_an_invalid_schedule_is_refused_naming_the_attribute(
    settings: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidWorkerError, match="misconfigured") as caught:
        spec_of(Misconfigured(**settings))
    assert reason in caught.value.reason


def test_a_node_scoped_worker_may_run_on_a_schedule() -> None:
    spec = spec_of(Misconfigured(schedule="0 * * * *", scope="node"))
    assert spec.scope is Scope.NODE and spec.kind is WorkerKind.PERIODIC


@given(
    slot=st.integers(min_value=-(2**60), max_value=2**60),
    scheduled=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    interval=st.timedeltas(min_value=timedelta(seconds=-10), max_value=timedelta(days=400)),
)
def test_any_tick_is_judged_by_a_cron_worker_without_raising(
    slot: int, scheduled: datetime, interval: timedelta
) -> None:
    tick = Tick(
        worker=CRON.name, slot=slot, scheduled=scheduled.replace(tzinfo=UTC), interval=interval
    )
    problem = CRON.tick_problem(tick, NOON)
    assert problem is None or isinstance(problem, str)
