"""Instance lifecycle: which transitions are allowed, and the error for the rest."""

from __future__ import annotations

import pytest

from ctrlplane.lifecycle import TRANSITIONS, IllegalTransitionError, check_transition
from ctrlplane.store.instances import InstanceState

S = InstanceState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PROVISIONING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.RUNNING, S.STOPPED),  # drift
        (S.STOPPED, S.RUNNING),  # drift
        (S.FAILED, S.STARTING),
        (S.RUNNING, S.DESTROYING),
        (S.DESTROYING, S.DESTROYED),
        (S.RUNNING, S.RUNNING),
    ],
)
def test_allowed(current: InstanceState, target: InstanceState) -> None:
    check_transition("web", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.DESTROYED, S.STARTING),
        (S.PROVISIONING, S.RUNNING),
        (S.STOPPED, S.STOPPING),
        (S.DESTROYING, S.RUNNING),
    ],
)
def test_illegal_transition_names_both_states(
    current: InstanceState, target: InstanceState
) -> None:
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition("web", current, target)
    message = str(caught.value)
    assert f"'{current.value}'" in message and f"'{target.value}'" in message and "web" in message


def test_every_state_has_a_rule_and_destroyed_is_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.DESTROYED] == frozenset()
