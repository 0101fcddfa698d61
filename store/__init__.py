"""The SQLite side of ctrlplane: schema, migrations and one module per table family."""

from ctrlplane.store.db import Store
from ctrlplane.store.errors import MigrationError, NotOpenError, StoreError
from ctrlplane.store.runs import Outcome, RunStore, Trigger, WorkerRun
from ctrlplane.store.writer import BatchWriter

__all__ = [
    "BatchWriter",
    "MigrationError",
    "NotOpenError",
    "Outcome",
    "RunStore",
    "Store",
    "StoreError",
    "Trigger",
    "WorkerRun",
]
