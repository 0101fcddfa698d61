"""settle.decide: what becomes of a message after its run, without NATS."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ctrlplane.actors.runs import Outcome, Trigger
from ctrlplane.actors.settle import (
    HAND_BACK,
    Decision,
    Settle,
    after_dead_letter,
    after_fault,
    after_record,
    decide,
    nak_delay,
)


def _decide(trigger: Trigger, outcome: Outcome, attempt: int = 1, **kw: object) -> Decision:
    return decide(trigger, outcome, attempt=attempt, max_attempts=3, error="boom", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.ERROR, Outcome.TIMEOUT, Outcome.SKIPPED])
def test_a_periodic_run_is_acked_whatever_its_outcome(outcome: Outcome) -> None:
    # A failed periodic run runs again at its next slot, not now.
    assert _decide(Trigger.TICK, outcome, attempt=7) == Decision(how=Settle.ACK)


def test_retry_is_honoured_for_ticks_with_its_delay() -> None:
    decision = _decide(Trigger.TICK, Outcome.RETRY, retry_delay=timedelta(seconds=42))
    assert decision == Decision(how=Settle.NAK, delay=42.0)


def test_retry_without_a_delay_backs_off() -> None:
    assert _decide(Trigger.TICK, Outcome.RETRY, attempt=3).delay == nak_delay(3) == 4.0


def test_a_cancelled_run_is_handed_back_at_once() -> None:
    for trigger in (Trigger.TICK, Trigger.EVENT):
        assert _decide(trigger, Outcome.CANCELLED) == Decision(how=Settle.NAK)


def test_a_failing_event_backs_off_then_is_dead_lettered() -> None:
    assert _decide(Trigger.EVENT, Outcome.ERROR, attempt=1) == Decision(how=Settle.NAK, delay=1.0)
    assert _decide(Trigger.EVENT, Outcome.ERROR, attempt=2) == Decision(how=Settle.NAK, delay=2.0)
    assert _decide(Trigger.EVENT, Outcome.ERROR, attempt=3) == Decision(
        how=Settle.DEAD_LETTER, reason="gave up after 3 attempts: boom"
    )


def test_an_event_retry_still_counts_its_attempts() -> None:
    late = _decide(Trigger.EVENT, Outcome.RETRY, attempt=3, retry_delay=timedelta(seconds=5))
    assert late.how is Settle.DEAD_LETTER
    early = _decide(Trigger.EVENT, Outcome.RETRY, attempt=1, retry_delay=timedelta(seconds=5))
    assert early == Decision(how=Settle.NAK, delay=5.0)


def test_a_rejected_message_is_dead_lettered_with_its_reason() -> None:
    decision = decide(
        Trigger.TICK, Outcome.DEAD_LETTERED, attempt=1, max_attempts=3, error="rejected: no"
    )
    assert decision == Decision(how=Settle.DEAD_LETTER, reason="rejected: no")


def test_backoff_is_capped() -> None:
    assert [nak_delay(a) for a in (1, 2, 3, 7, 8, 50)] == [1.0, 2.0, 4.0, 60.0, 60.0, 60.0]


def test_a_handling_fault_backs_off_then_is_dead_lettered() -> None:
    first = after_fault(attempt=1, max_attempts=3, error="RecursionError")
    second = after_fault(attempt=2, max_attempts=3, error="RecursionError")
    assert (first.how, second.how) == (Settle.NAK, Settle.NAK)
    assert first.delay is not None and second.delay is not None
    assert 0 < first.delay < second.delay
    last = after_fault(attempt=3, max_attempts=3, error="RecursionError")
    assert last.how is Settle.DEAD_LETTER
    assert last.reason == "handling failed 3 times: RecursionError"


def test_a_kept_dead_letter_is_terminated_one_not_kept_comes_back_later() -> None:
    assert after_dead_letter(kept=True, attempt=3) == Decision(how=Settle.TERM)
    assert after_dead_letter(kept=False, attempt=3) == Decision(how=Settle.NAK, delay=4.0)


def test_a_message_whose_record_was_dropped_is_handed_back_at_once() -> None:
    ack = Decision(how=Settle.ACK)
    assert after_record(ack, written=True) is ack
    assert after_record(ack, written=False) == HAND_BACK == Decision(how=Settle.NAK)
    assert after_record(Decision(how=Settle.TERM), written=False) == HAND_BACK


def test_a_refused_message_and_a_skipped_tick_go_through_decide() -> None:
    assert _decide(Trigger.EVENT, Outcome.DEAD_LETTERED).how is Settle.DEAD_LETTER
    assert _decide(Trigger.TICK, Outcome.SKIPPED, attempt=9) == Decision(how=Settle.ACK)


@pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.ERROR, Outcome.TIMEOUT, Outcome.SKIPPED])
def test_a_run_asked_for_now_is_acked_whatever_its_outcome(outcome: Outcome) -> None:
    # One extra run (ctrlplane worker run): a failure is not retried, and a
    # retry would hold the worker's tick consumer.
    assert _decide(Trigger.MANUAL, outcome, attempt=7) == Decision(how=Settle.ACK)
