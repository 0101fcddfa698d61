"""The built-in workers: the seed's periodic ones and the event-driven ones that react."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.workers.audit_recorder import AuditRecorder
    from ctrlplane.workers.cert_renewer import CertRenewer
    from ctrlplane.workers.gc import GarbageCollector
    from ctrlplane.workers.health_runner import HealthRunner
    from ctrlplane.workers.reconciler import Reconciler
    from ctrlplane.workers.remediator import Remediator
    from ctrlplane.workers.telemetry_collector import TelemetryCollector

__all__ = [
    "AuditRecorder",
    "CertRenewer",
    "GarbageCollector",
    "HealthRunner",
    "Reconciler",
    "Remediator",
    "TelemetryCollector",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "AuditRecorder": "ctrlplane.workers.audit_recorder",
    "CertRenewer": "ctrlplane.workers.cert_renewer",
    "GarbageCollector": "ctrlplane.workers.gc",
    "HealthRunner": "ctrlplane.workers.health_runner",
    "Reconciler": "ctrlplane.workers.reconciler",
    "Remediator": "ctrlplane.workers.remediator",
    "TelemetryCollector": "ctrlplane.workers.telemetry_collector",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
