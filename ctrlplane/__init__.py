"""ctrlplane workers: the background-worker runtime of a control plane, on NATS.

Public API::

    from ctrlplane import ControlPlane, Config
    from ctrlplane.actors import Worker, RunContext, Scheduler, WorkerInfo
    from ctrlplane.bus import Event
"""

from ctrlplane.app import ControlPlane
from ctrlplane.config import Config, load_config
from ctrlplane.errors import ConfigError, CtrlplaneError, WorkerLoadError

__all__ = [
    "Config",
    "ConfigError",
    "ControlPlane",
    "CtrlplaneError",
    "WorkerLoadError",
    "load_config",
]
