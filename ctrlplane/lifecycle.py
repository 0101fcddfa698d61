"""The lifecycle of an instance: which state may follow which."""

from __future__ import annotations

from ctrlplane.errors import CtrlplaneError
from ctrlplane.store.instances import InstanceState

S = InstanceState

# What a control plane allows. Drift (the provider reporting something we did
# not do) may move a settled state to any other settled state, hence running
# <-> stopped <-> failed in every direction.
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.PROVISIONING: frozenset({S.STARTING, S.STOPPED, S.FAILED, S.DESTROYING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.STOPPING, S.DESTROYING}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.FAILED, S.STARTING, S.DESTROYING}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.RUNNING, S.DESTROYING}),
    S.STOPPED: frozenset({S.STARTING, S.RUNNING, S.FAILED, S.DESTROYING}),
    S.FAILED: frozenset({S.STARTING, S.RUNNING, S.STOPPED, S.STOPPING, S.DESTROYING}),
    S.DESTROYING: frozenset({S.DESTROYED, S.FAILED}),
    S.DESTROYED: frozenset(),
}

SETTLED = frozenset({S.RUNNING, S.STOPPED, S.FAILED})
"""States nobody is in the middle of changing."""


class IllegalTransitionError(CtrlplaneError):
    """An instance was asked to move between two states that do not connect."""

    def __init__(self, instance: str, current: InstanceState, target: InstanceState) -> None:
        self.instance = instance
        self.current = current
        self.target = target
        super().__init__(
            f"instance {instance!r}: cannot go from {current.value!r} to {target.value!r}"
        )


def check_transition(instance: str, current: InstanceState, target: InstanceState) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is allowed.

    Staying in the same state is always allowed.
    """
    if current != target and target not in TRANSITIONS[current]:
        raise IllegalTransitionError(instance, current, target)
