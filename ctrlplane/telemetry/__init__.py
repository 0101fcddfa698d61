"""Telemetry collectors: the built-in ``process`` and ``prometheus`` ones and plugins.

A collector implements :class:`ctrlplane.types.Collector`; packages add their
own through the ``ctrlplane.collectors`` entry-point group, and
:func:`load_collectors` gathers them all. The TelemetryCollector worker
(:mod:`ctrlplane.workers.telemetry_collector`) runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.telemetry.errors import (
        CollectorError,
        CollectorLoadError,
        InstanceGoneError,
        TelemetryError,
    )
    from ctrlplane.telemetry.process import ProcessCollector
    from ctrlplane.telemetry.prometheus import (
        PrometheusCollector,
        parse_exposition,
    )
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

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "CollectorError": "ctrlplane.telemetry.errors",
    "CollectorLoadError": "ctrlplane.telemetry.errors",
    "InstanceGoneError": "ctrlplane.telemetry.errors",
    "TelemetryError": "ctrlplane.telemetry.errors",
    "ProcessCollector": "ctrlplane.telemetry.process",
    "PrometheusCollector": "ctrlplane.telemetry.prometheus",
    "parse_exposition": "ctrlplane.telemetry.prometheus",
    "ENTRY_POINT_GROUP": "ctrlplane.telemetry.registry",
    "builtin_collectors": "ctrlplane.telemetry.registry",
    "check_collector": "ctrlplane.telemetry.registry",
    "close_collectors": "ctrlplane.telemetry.registry",
    "load_collectors": "ctrlplane.telemetry.registry",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
