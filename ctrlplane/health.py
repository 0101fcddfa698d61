"""How a check's status moves: flap suppression with consecutive thresholds.

Like Kubernetes probes, a check becomes ``unhealthy`` only after
``failure_threshold`` consecutive failures, and healthy again only after
``success_threshold`` consecutive passes. A check that cannot run at all is
``unknown`` at once: there is nothing to be patient about.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from msgspec import structs

from ctrlplane.store.health import CheckResult, CheckSpec, CheckState, HealthStatus, Outcome
from ctrlplane.types import Probe

H = HealthStatus


def status_of(probe: Probe, spec: CheckSpec, latency: timedelta | None) -> HealthStatus:
    """The status one result alone would give."""
    if probe.outcome is Outcome.PASS:
        threshold = spec.latency_threshold
        if threshold is not None and latency is not None and latency > threshold:
            return H.DEGRADED
        return H.HEALTHY
    return H.UNHEALTHY if probe.outcome is Outcome.FAIL else H.UNKNOWN


def transition_event(previous: HealthStatus, current: HealthStatus) -> str | None:
    """The event type that announces ``previous -> current``, if any."""
    if previous == current:
        return None
    if current is H.UNHEALTHY:
        return "health.failed"
    if current is H.DEGRADED:
        return "health.degraded"
    if current is H.UNKNOWN:
        return "health.unknown"
    return "health.recovered" if previous is H.UNHEALTHY else "health.passed"


def advance(state: CheckState, result: CheckResult) -> tuple[CheckState, str | None]:
    """Fold ``result`` into ``state``; returns the new state and the event to
    publish (None when the status did not change)."""
    spec = state.spec
    passes, failures = state.consecutive_passes, state.consecutive_failures
    status = state.status
    # Streaks stop counting at their threshold: past it they change nothing,
    # and a check whose state does not change is not written again.
    if result.outcome is Outcome.PASS:
        passes, failures = min(passes + 1, spec.success_threshold), 0
        if passes >= spec.success_threshold:
            status = result.status
    elif result.outcome is Outcome.FAIL:
        passes, failures = 0, min(failures + 1, spec.failure_threshold)
        if failures >= spec.failure_threshold:
            status = H.UNHEALTHY
    else:
        passes, failures, status = 0, 0, H.UNKNOWN
    event = transition_event(state.status, status)
    changed: datetime | None = result.time if event else state.changed
    new = structs.replace(
        state,
        status=status,
        consecutive_passes=passes,
        consecutive_failures=failures,
        last_checked=result.time,
        last_message=result.message,
        last_latency=result.latency,
        changed=changed,
    )
    return new, event


def persisted_change(before: CheckState, after: CheckState) -> bool:
    """Whether ``after`` differs from ``before`` in what the store keeps."""
    return (
        before.status != after.status
        or before.consecutive_passes != after.consecutive_passes
        or before.consecutive_failures != after.consecutive_failures
        or before.changed != after.changed
    )
