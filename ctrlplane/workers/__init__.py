"""The built-in workers: the seed's periodic ones and the event-driven ones that react."""

from ctrlplane.workers.audit_recorder import AuditRecorder
from ctrlplane.workers.health_runner import HealthRunner
from ctrlplane.workers.reconciler import Reconciler
from ctrlplane.workers.remediator import Remediator

__all__ = ["AuditRecorder", "HealthRunner", "Reconciler", "Remediator"]
