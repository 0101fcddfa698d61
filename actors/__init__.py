"""The actor runtime: workers, their run context, the scheduler and the ticker.

Generic and reusable: it knows nothing of instances or health.
"""

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.errors import (
    ActorError,
    InvalidWorkerError,
    Reject,
    Retry,
    SchedulerStateError,
)
from ctrlplane.actors.info import WorkerInfo, WorkerKind
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
