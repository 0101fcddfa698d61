"""What to do with a message after its run: a pure function of the outcome."""

from __future__ import annotations

from datetime import timedelta
from enum import Enum

from msgspec import Struct

from ctrlplane.actors.runs import Outcome, Trigger

NAK_BACKOFF = (1.0, 60.0)


class Settle(Enum):
    """How a handled message is settled with JetStream."""

    ACK = "ack"
    """Done: never delivered again."""
    NAK = "nak"
    """Handed back: delivered again (after ``delay``, if any)."""
    DEAD_LETTER = "dead_letter"
    """Copied to the dead-letter subject with the reason, then terminated."""
    TERM = "term"
    """Terminated: what a dead letter becomes once its copy is kept."""


class Decision(Struct, frozen=True, kw_only=True):
    """A settlement and, where it applies, its delay or dead-letter reason."""

    how: Settle
    delay: float | None = None
    reason: str | None = None


def nak_delay(attempt: int) -> float:
    """Exponential backoff before a failed message is delivered again."""
    base, cap = NAK_BACKOFF
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def decide(
    trigger: Trigger,
    outcome: Outcome,
    *,
    attempt: int,
    max_attempts: int,
    error: str | None = None,
    retry_delay: timedelta | None = None,
) -> Decision:
    """Settle a message whose run (or skip) ended in ``outcome``.

    - a rejected message is dead-lettered at once;
    - a run cancelled by a stop is handed back for another process;
    - ``Retry`` is honoured for ticks and events alike, after its delay
      (or the backoff for this attempt), so an outage is no tight loop
      (an event still counts the attempt against ``max_attempts``);
    - a periodic run that failed is not retried: it runs again next slot
      (a run asked for now, likewise: it was one extra run);
    - an event that keeps failing is dead-lettered after ``max_attempts``.
    """
    if outcome is Outcome.DEAD_LETTERED:
        return Decision(how=Settle.DEAD_LETTER, reason=error or "rejected")
    if outcome is Outcome.CANCELLED:
        return Decision(how=Settle.NAK)
    if trigger is Trigger.TICK or trigger is Trigger.MANUAL:
        if outcome is Outcome.RETRY:
            return Decision(how=Settle.NAK, delay=_delay(attempt, retry_delay))
        return Decision(how=Settle.ACK)
    if outcome in (Outcome.OK, Outcome.SKIPPED):
        return Decision(how=Settle.ACK)
    if attempt >= max_attempts:
        return Decision(how=Settle.DEAD_LETTER, reason=f"gave up after {attempt} attempts: {error}")
    return Decision(how=Settle.NAK, delay=_delay(attempt, retry_delay))


def after_fault(*, attempt: int, max_attempts: int, error: str) -> Decision:
    """Settle a message whose handling failed outside the worker's run.

    Such a failure (a bug in the runtime, or input that breaks it past the
    decoder) would fail again at once: the message is handed back after the
    backoff for this attempt, never straight away, and dead-lettered with
    the error once ``max_attempts`` deliveries have failed.
    """
    if attempt >= max_attempts:
        return Decision(how=Settle.DEAD_LETTER, reason=f"handling failed {attempt} times: {error}")
    return Decision(how=Settle.NAK, delay=nak_delay(attempt))


HAND_BACK = Decision(how=Settle.NAK)
"""Handed back at once, for another process (or a later run) to take."""


def after_dead_letter(*, kept: bool, attempt: int) -> Decision:
    """Settle a dead-lettered message once its copy was published (``kept``) or not.

    A kept copy lets the message be terminated. One not kept (NATS away, the
    dead-letter subject refused it) is handed back after the backoff for
    this attempt, later each time, rather than lost.
    """
    if kept:
        return Decision(how=Settle.TERM)
    return Decision(how=Settle.NAK, delay=nak_delay(attempt))


def after_record(decision: Decision, *, written: bool) -> Decision:
    """Settle a message once its run's record was committed (``written``) or dropped.

    A message is never acked without its record: one whose record the store
    dropped is handed back at once, so its next run is recorded.
    """
    return decision if written else HAND_BACK


def _delay(attempt: int, retry_delay: timedelta | None) -> float:
    return retry_delay.total_seconds() if retry_delay is not None else nak_delay(attempt)
