"""What the checker tests share: an instance, a spec builder, child processes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import psutil

from ctrlplane.store.health import CheckSpec
from ctrlplane.store.instances import DesiredState, Instance, InstanceSpec, InstanceState

_NOW = datetime.now(UTC)
INSTANCE = Instance(
    id="i-test",
    name="test",
    provider="process",
    spec=InstanceSpec(command=["true"]),
    spec_hash="0",
    desired=DesiredState.RUNNING,
    state=InstanceState.RUNNING,
    created=_NOW,
    updated=_NOW,
)
PY = sys.executable


def spec(type: str, **fields: Any) -> CheckSpec:
    return CheckSpec(name="check", type=type, **fields)


def children() -> set[int]:
    """This process's children and theirs."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def gone(pid: int) -> bool:
    """Not running: reaped, or a zombie left to whoever adopted it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
