"""The actor runtime: workers, their run context, the scheduler and the ticker.

Generic and reusable: it knows nothing of instances or health.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.actors.context import RunContext
    from ctrlplane.actors.errors import (
        ActorError,
        InvalidWorkerError,
        Reject,
        Retry,
        SchedulerStateError,
    )
    from ctrlplane.actors.info import (
        Scope,
        WorkerInfo,
        WorkerKind,
    )
    from ctrlplane.actors.runs import Outcome, Trigger
    from ctrlplane.actors.scheduler import Scheduler
    from ctrlplane.actors.types import RunRecorder, Worker

__all__ = [
    "ActorError",
    "InvalidWorkerError",
    "Outcome",
    "Reject",
    "Retry",
    "RunContext",
    "RunRecorder",
    "Scheduler",
    "SchedulerStateError",
    "Scope",
    "Trigger",
    "Worker",
    "WorkerInfo",
    "WorkerKind",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "Outcome": "ctrlplane.actors.runs",
    "Trigger": "ctrlplane.actors.runs",
    "RunRecorder": "ctrlplane.actors.types",
    "RunContext": "ctrlplane.actors.context",
    "ActorError": "ctrlplane.actors.errors",
    "InvalidWorkerError": "ctrlplane.actors.errors",
    "Reject": "ctrlplane.actors.errors",
    "Retry": "ctrlplane.actors.errors",
    "SchedulerStateError": "ctrlplane.actors.errors",
    "Scope": "ctrlplane.actors.info",
    "WorkerInfo": "ctrlplane.actors.info",
    "WorkerKind": "ctrlplane.actors.info",
    "Scheduler": "ctrlplane.actors.scheduler",
    "Worker": "ctrlplane.actors.types",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
