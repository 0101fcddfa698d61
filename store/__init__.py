"""The store: one interface, SQLite or PostgreSQL behind it, one module per table family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.store.db import Store
    from ctrlplane.store.errors import (
        MigrationError,
        NotOpenError,
        StoreError,
        StoreUnavailableError,
    )
    from ctrlplane.store.runs import (
        Outcome,
        RunStore,
        Trigger,
        WorkerRun,
    )
    from ctrlplane.store.types import Database, Dialect
    from ctrlplane.store.writer import BatchWriter

__all__ = [
    "BatchWriter",
    "Database",
    "Dialect",
    "MigrationError",
    "NotOpenError",
    "Outcome",
    "RunStore",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "Trigger",
    "WorkerRun",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "Store": "ctrlplane.store.db",
    "MigrationError": "ctrlplane.store.errors",
    "NotOpenError": "ctrlplane.store.errors",
    "StoreError": "ctrlplane.store.errors",
    "StoreUnavailableError": "ctrlplane.store.errors",
    "Database": "ctrlplane.store.types",
    "Dialect": "ctrlplane.store.types",
    "Outcome": "ctrlplane.store.runs",
    "RunStore": "ctrlplane.store.runs",
    "Trigger": "ctrlplane.store.runs",
    "WorkerRun": "ctrlplane.store.runs",
    "BatchWriter": "ctrlplane.store.writer",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
