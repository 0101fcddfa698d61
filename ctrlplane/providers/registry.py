"""Finding providers: the built-in one and those that packages declare as entry points."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

from ctrlplane.plugins import entry_point_objects
from ctrlplane.providers.errors import ProviderLoadError
from ctrlplane.providers.process import ProcessProvider
from ctrlplane.types import HostBoundProvider, Provider

__all__ = ["ENTRY_POINT_GROUP", "host_bound", "load_providers"]

ENTRY_POINT_GROUP = "ctrlplane.providers"

_METHODS = ("start", "stop", "status", "pids")


def load_providers(data_dir: Path, *, executables: Sequence[str] = ()) -> dict[str, Provider]:
    """Every provider, keyed by its ``name``: ``process`` and the entry points' ones.

    An entry point in the ``ctrlplane.providers`` group names a class or a
    factory, which is called with ``data_dir`` as its only argument, or a
    provider instance, which is used as it is. ``executables`` is the
    ``process`` provider's allow-list (``process_executables``).

    Raises:
        ProviderLoadError: an entry point cannot be loaded, does not give a
            provider, or gives one whose name is already taken.
    """
    builtin = ProcessProvider(data_dir, executables=executables)
    providers: dict[str, Provider] = {builtin.name: builtin}
    loaded = entry_point_objects(
        ENTRY_POINT_GROUP,
        is_plugin=lambda o: isinstance(o, Provider),
        args=(data_dir,),
        error=ProviderLoadError,
        called_with="the data dir",
    )
    for ref, obj in loaded:
        provider = _provider(ref, obj)
        if provider.name in providers:
            raise ProviderLoadError(ref, f"the provider name {provider.name!r} is already taken")
        providers[provider.name] = provider
    return providers


def _provider(ref: str, obj: object) -> Provider:
    if not isinstance(obj, Provider):
        raise ProviderLoadError(
            ref, "is not a provider: it needs 'name', 'start', 'stop', 'status' and 'pids'"
        )
    if not isinstance(obj.name, str) or not obj.name:
        raise ProviderLoadError(ref, f"its name must be a non-empty string, not {obj.name!r}")
    for method in _METHODS:
        if not inspect.iscoroutinefunction(getattr(obj, method)):
            raise ProviderLoadError(ref, f"{method!r} must be an async method")
    if getattr(obj, "host_bound", False) is True and not (
        isinstance(obj, HostBoundProvider)
        and inspect.iscoroutinefunction(obj.local_instances)
        and inspect.iscoroutinefunction(obj.stop_local)
    ):
        raise ProviderLoadError(
            ref, "is host-bound, so it needs async 'local_instances' and 'stop_local'"
        )
    return obj


def host_bound(provider: Provider | None) -> HostBoundProvider | None:
    """``provider`` if it is host-bound (``host_bound = True``), else ``None``.

    A provider without the attribute is not host-bound, so providers written
    before placement existed keep working unchanged.
    """
    if getattr(provider, "host_bound", False) is True and isinstance(provider, HostBoundProvider):
        return provider
    return None
