"""Errors of telemetry collection."""

from __future__ import annotations

from ctrlplane.errors import CtrlplaneError


class TelemetryError(CtrlplaneError):
    """Base class of the telemetry errors."""


class CollectorError(TelemetryError):
    """A collector could not collect one instance's telemetry.

    Attributes:
        collector: The collector's name.
        instance: The instance's name.
        reason: What went wrong.
    """

    def __init__(self, collector: str, instance: str, reason: str) -> None:
        self.collector = collector
        self.instance = instance
        self.reason = reason
        super().__init__(f"telemetry: {collector} on {instance!r}: {reason}")

    def __reduce__(self) -> tuple[type[CollectorError], tuple[str, str, str]]:
        # Exceptions pickle their ``args`` by default: the message, not the fields.
        return type(self), (self.collector, self.instance, self.reason)


class InstanceGoneError(CollectorError):
    """The instance has no process left to collect from: it has exited, and the
    reconciler is yet to record it.

    A gap in the instance's telemetry, not a fault of the collector: the
    TelemetryCollector notes it (at info level) and the run does not fail. A
    plugin collector raises it in the same case.
    """


class CollectorLoadError(TelemetryError):
    """A collector that an entry point declares cannot be loaded, or a name is taken.

    Attributes:
        ref: The entry point (or collector) that failed.
        reason: Why it could not be loaded.
    """

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"collector {ref}: {reason}")

    def __reduce__(self) -> tuple[type[CollectorLoadError], tuple[str, str]]:
        return type(self), (self.ref, self.reason)
