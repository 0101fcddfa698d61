"""The actor runtime: workers, their run context, the scheduler and the ticker.

Generic and reusable: it knows nothing of instances or health.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    "WorkerInfo": "ctrlplane.actors.info",
    "WorkerKind": "ctrlplane.actors.info",
    "Scheduler": "ctrlplane.actors.scheduler",
    "Worker": "ctrlplane.actors.types",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
