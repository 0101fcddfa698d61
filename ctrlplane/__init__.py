"""ctrlplane workers: the background-worker runtime of a control plane, on NATS.

Public API::

    from ctrlplane import ControlPlane, Config
    from ctrlplane.actors import Worker, RunContext, Scheduler, WorkerInfo
    from ctrlplane.bus import Event
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
