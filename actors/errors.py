"""Errors of the actor runtime, and the exceptions a worker raises to steer acknowledgement."""

from __future__ import annotations

from datetime import timedelta


class ActorError(Exception):
    """Base class of every error raised by ``ctrlplane.actors``."""


class InvalidWorkerError(ActorError, ValueError):
    """A worker cannot be registered: the message names the problem."""

    def __init__(self, worker: object, reason: str) -> None:
        self.worker = worker
        self.reason = reason
        super().__init__(f"worker {worker!r}: {reason}")


class InvalidScheduleError(ActorError, ValueError):
    """A cron schedule cannot be used; ``field`` (``schedule`` or ``timezone``) says why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field} {value!r}: {reason}")


class SchedulerStateError(ActorError, RuntimeError):
    """The scheduler was asked to do something its state does not allow."""


class TooManyConsumersError(ActorError, ValueError):
    """The workers need more consumers on a stream than its ``max_consumers`` admits."""

    def __init__(self, stream: str, needed: int, limit: int) -> None:
        self.stream = stream
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"the workers need {needed} consumers on stream {stream}, more than "
            f"max_consumers ({limit}) admits: raise max_consumers or run fewer workers"
        )


class Retry(ActorError):
    """Raise from ``run`` to have this message delivered again after ``delay``.

    The run is recorded with outcome ``retry``; it does not count as a failure
    and publishes no ``worker.failed`` event. For a tick, ``delay`` is ignored:
    the tick is handed back at once.
    """

    def __init__(self, delay: timedelta = timedelta(seconds=1), reason: str = "") -> None:
        self.delay = delay
        self.reason = reason
        super().__init__(reason or f"retry in {delay.total_seconds():g}s")


class Reject(ActorError):
    """Raise from ``run`` when the message can never succeed.

    The message is terminated at once and copied to the worker's dead-letter
    subject with ``reason``; it is not retried.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
