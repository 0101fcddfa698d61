"""Providers run instances: the built-in ``process`` provider and plugins.

A provider implements :class:`ctrlplane.types.Provider`; packages add their own
through the ``ctrlplane.providers`` entry-point group, and
:func:`load_providers` gathers them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctrlplane.providers.errors import (
        ProviderError,
        ProviderLoadError,
    )
    from ctrlplane.providers.process import ProcessProvider
    from ctrlplane.providers.registry import (
        ENTRY_POINT_GROUP,
        load_providers,
    )

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProcessProvider",
    "ProviderError",
    "ProviderLoadError",
    "load_providers",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "ProviderError": "ctrlplane.providers.errors",
    "ProviderLoadError": "ctrlplane.providers.errors",
    "ProcessProvider": "ctrlplane.providers.process",
    "ENTRY_POINT_GROUP": "ctrlplane.providers.registry",
    "load_providers": "ctrlplane.providers.registry",
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
