"""Providers run instances: the built-in ``process`` provider and plugins.

A provider implements :class:`ctrlplane.types.Provider`; packages add their own
through the ``ctrlplane.providers`` entry-point group, and
:func:`load_providers` gathers them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.providers.errors import (
        ProviderError,
        ProviderLoadError,
    )
    from ctrlplane.providers.process import ProcessProvider
    from ctrlplane.providers.registry import (
        ENTRY_POINT_GROUP,
        host_bound,
        load_providers,
    )

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProcessProvider",
    "ProviderError",
    "ProviderLoadError",
    "host_bound",
    "load_providers",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "ProviderError": "ctrlplane.providers.errors",
    "ProviderLoadError": "ctrlplane.providers.errors",
    "ProcessProvider": "ctrlplane.providers.process",
    "ENTRY_POINT_GROUP": "ctrlplane.providers.registry",
    "host_bound": "ctrlplane.providers.registry",
    "load_providers": "ctrlplane.providers.registry",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
