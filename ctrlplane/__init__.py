"""ctrlplane workers: the background-worker runtime of a control plane, on NATS.

Public API::

    from ctrlplane import ControlPlane, Config
    from ctrlplane.actors import Worker, RunContext, Scheduler, WorkerInfo
    from ctrlplane.bus import Event
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.app import ControlPlane
    from ctrlplane.config import (
        Config,
        load_config,
    )
    from ctrlplane.errors import (
        ConfigError,
        CtrlplaneError,
        WorkerLoadError,
    )

__all__ = [
    "Config",
    "ConfigError",
    "ControlPlane",
    "CtrlplaneError",
    "WorkerLoadError",
    "load_config",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "ControlPlane": "ctrlplane.app",
    "Config": "ctrlplane.config",
    "load_config": "ctrlplane.config",
    "ConfigError": "ctrlplane.errors",
    "CtrlplaneError": "ctrlplane.errors",
    "WorkerLoadError": "ctrlplane.errors",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
