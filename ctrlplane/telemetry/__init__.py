"""Telemetry collectors: the built-in ``process`` and ``prometheus`` ones and plugins.

A collector implements :class:`ctrlplane.types.Collector`; packages add their
own through the ``ctrlplane.collectors`` entry-point group, and
:func:`load_collectors` gathers them all. The TelemetryCollector worker
(:mod:`ctrlplane.workers.telemetry_collector`) runs them.
"""

from ctrlplane.telemetry.errors import (
    CollectorError,
    CollectorLoadError,
    InstanceGoneError,
    TelemetryError,
)
from ctrlplane.telemetry.process import ProcessCollector
from ctrlplane.telemetry.prometheus import PrometheusCollector, parse_exposition
from ctrlplane.telemetry.registry import (
    ENTRY_POINT_GROUP,
    builtin_collectors,
    check_collector,
    close_collectors,
    load_collectors,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "CollectorError",
    "CollectorLoadError",
    "InstanceGoneError",
    "ProcessCollector",
    "PrometheusCollector",
    "TelemetryError",
    "builtin_collectors",
    "check_collector",
    "close_collectors",
    "load_collectors",
    "parse_exposition",
]
