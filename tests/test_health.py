"""Check status transitions: flap suppression by consecutive thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ctrlplane.health import advance, status_of, transition_event
from ctrlplane.store.health import CheckResult, CheckSpec, CheckState, HealthStatus, Outcome
from ctrlplane.types import Probe

H = HealthStatus


def _result(outcome: Outcome, status: HealthStatus, n: int) -> CheckResult:
    return CheckResult(
        instance_id="i-1",
        check="http",
        time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        outcome=outcome,
        status=status,
        latency=timedelta(milliseconds=5),
        message=outcome.value,
    )


PASS = (Outcome.PASS, H.HEALTHY)
SLOW = (Outcome.PASS, H.DEGRADED)
FAIL = (Outcome.FAIL, H.UNHEALTHY)
BROKEN = (Outcome.UNKNOWN, H.UNKNOWN)


def _run(
    sequence: list[tuple[Outcome, HealthStatus]],
    failure_threshold: int = 3,
    success_threshold: int = 1,
) -> tuple[list[HealthStatus], list[str]]:
    spec = CheckSpec(
        name="http",
        target="http://127.0.0.1:1/",
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
    )
    state = CheckState(instance_id="i-1", name="http", spec=spec)
    statuses, events = [], []
    for n, (outcome, status) in enumerate(sequence):
        state, event = advance(state, _result(outcome, status, n))
        statuses.append(state.status)
        if event:
            events.append(event)
    return statuses, events


def test_a_new_check_passes_at_once_and_fails_after_the_threshold() -> None:
    statuses, events = _run([PASS, FAIL, FAIL, FAIL, FAIL])
    assert statuses == [H.HEALTHY, H.HEALTHY, H.HEALTHY, H.UNHEALTHY, H.UNHEALTHY]
    assert events == ["health.passed", "health.failed"]


def test_a_flapping_target_changes_only_as_the_thresholds_allow() -> None:
    # Fails twice, passes, fails twice, passes...: never three failures in a
    # row, so with failure_threshold=3 it never becomes unhealthy.
    flapping = [PASS] + [FAIL, FAIL, PASS] * 5
    statuses, events = _run(flapping)
    assert set(statuses) == {H.HEALTHY}
    assert events == ["health.passed"]


def test_recovery_needs_success_threshold_passes() -> None:
    statuses, events = _run(
        [FAIL, FAIL, PASS, FAIL, PASS, PASS], failure_threshold=2, success_threshold=2
    )
    assert statuses == [H.UNKNOWN, H.UNHEALTHY, H.UNHEALTHY, H.UNHEALTHY, H.UNHEALTHY, H.HEALTHY]
    assert events == ["health.failed", "health.recovered"]


def test_slow_passes_degrade_and_unknown_is_immediate() -> None:
    statuses, events = _run([PASS, SLOW, PASS, BROKEN, PASS])
    assert statuses == [H.HEALTHY, H.DEGRADED, H.HEALTHY, H.UNKNOWN, H.HEALTHY]
    assert events == [
        "health.passed",
        "health.degraded",
        "health.passed",
        "health.unknown",
        "health.passed",
    ]


def test_state_keeps_streaks_and_change_time() -> None:
    spec = CheckSpec(name="c", target="x", failure_threshold=2)
    state = CheckState(instance_id="i", name="c", spec=spec)
    state, _ = advance(state, _result(*FAIL, n=1))
    assert (state.consecutive_failures, state.consecutive_passes, state.changed) == (1, 0, None)
    state, event = advance(state, _result(*FAIL, n=2))
    assert event == "health.failed"
    assert state.changed == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
    assert state.last_message == "fail"


@pytest.mark.parametrize(
    ("outcome", "latency_ms", "threshold_ms", "expected"),
    [
        (Outcome.PASS, 10, None, H.HEALTHY),
        (Outcome.PASS, 10, 50, H.HEALTHY),
        (Outcome.PASS, 80, 50, H.DEGRADED),
        (Outcome.FAIL, 10, 50, H.UNHEALTHY),
        (Outcome.UNKNOWN, None, 50, H.UNKNOWN),
    ],
)
def test_status_of_one_result(
    outcome: Outcome, latency_ms: int | None, threshold_ms: int | None, expected: HealthStatus
) -> None:
    spec = CheckSpec(
        name="c",
        latency_threshold=None if threshold_ms is None else timedelta(milliseconds=threshold_ms),
    )
    latency = None if latency_ms is None else timedelta(milliseconds=latency_ms)
    assert status_of(Probe(outcome=outcome), spec, latency) is expected


def test_transition_events() -> None:
    assert transition_event(H.HEALTHY, H.HEALTHY) is None
    assert transition_event(H.UNHEALTHY, H.HEALTHY) == "health.recovered"
    assert transition_event(H.DEGRADED, H.HEALTHY) == "health.passed"
    assert transition_event(H.HEALTHY, H.UNHEALTHY) == "health.failed"
