"""The built-in workers: the seed's periodic ones and the event-driven ones that react."""

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
