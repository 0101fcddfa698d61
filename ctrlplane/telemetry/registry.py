"""The collectors telemetry uses: the built-ins and those installed packages declare."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping

import structlog

from ctrlplane.plugins import close_all, entry_point_objects, keyed
from ctrlplane.telemetry.errors import CollectorLoadError
from ctrlplane.telemetry.process import ProcessCollector
from ctrlplane.telemetry.prometheus import PrometheusCollector
from ctrlplane.types import Collector, Provider

__all__ = [
    "ENTRY_POINT_GROUP",
    "builtin_collectors",
    "check_collector",
    "close_collectors",
    "load_collectors",
]

ENTRY_POINT_GROUP = "ctrlplane.collectors"

log = structlog.get_logger("ctrlplane.telemetry")

_METHODS = ("collect_metrics", "collect_resources")


def builtin_collectors(providers: Mapping[str, Provider]) -> dict[str, Collector]:
    """New instances of the built-in collectors, keyed by name: process, prometheus."""
    collectors: list[Collector] = [ProcessCollector(providers), PrometheusCollector()]
    return {collector.name: collector for collector in collectors}


def check_collector(ref: str, obj: object) -> Collector:
    """``obj`` if it is a collector.

    Raises:
        CollectorLoadError: naming ``ref`` and what ``obj`` lacks.
    """
    if not isinstance(obj, Collector):
        raise CollectorLoadError(
            ref,
            "is not a collector: it needs 'name', 'collect_metrics(instance)' "
            "and 'collect_resources(instance)'",
        )
    if not isinstance(obj.name, str) or not obj.name:
        raise CollectorLoadError(ref, f"its 'name' must be a non-empty string, not {obj.name!r}")
    for method in _METHODS:
        if not inspect.iscoroutinefunction(getattr(obj, method)):
            raise CollectorLoadError(ref, f"its {method!r} must be an async method")
    return obj


def load_collectors(
    providers: Mapping[str, Provider], group: str = ENTRY_POINT_GROUP
) -> dict[str, Collector]:
    """The built-in collectors plus those of the ``ctrlplane.collectors`` entry-point group.

    An entry point names a collector class or a factory, which is called with
    the providers (by name) as its only argument, or a collector instance,
    which is used as it is. A collector is registered under its ``name``
    (name the entry point after it): a plugin named like a built-in
    (``process``, say) replaces the built-in. Two plugins may not share a name.

    Raises:
        CollectorLoadError: naming the entry point that cannot be loaded, is
            not a collector, or has a name another entry point has too.
    """
    loaded = entry_point_objects(
        group,
        is_plugin=lambda o: isinstance(o, Collector),
        args=(providers,),
        error=CollectorLoadError,
        called_with="the providers",
    )
    return keyed(
        builtin_collectors(providers),
        ((ref, check_collector(ref, obj)) for ref, obj in loaded),
        key=lambda c: c.name,
        error=CollectorLoadError,
        what="name",
    )


async def close_collectors(collectors: Mapping[str, Collector] | Iterable[Collector]) -> None:
    """Call ``close()`` (sync or async) on every collector that has one."""
    await close_all(collectors, "collector")
