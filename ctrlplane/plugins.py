"""Loading plugins: ``module:attr`` references and entry points.

Workers, providers and checkers are all found the same way: an entry point
(or a reference in the config) names a class or factory, which is called,
or an object, which is used as it is. Each kind then checks the shape of
what it got.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import TypeVar

import structlog

from ctrlplane.actors.types import Worker
from ctrlplane.errors import WorkerLoadError

ENTRY_POINT_GROUP = "ctrlplane.workers"
T = TypeVar("T")
log = structlog.get_logger("ctrlplane.plugins")

LoadError = Callable[[str, str], Exception]
"""Builds the error of a plugin kind from the reference and the reason."""


def instantiate(
    ref: str,
    obj: object,
    *,
    is_plugin: Callable[[object], bool],
    args: tuple[object, ...] = (),
    error: LoadError,
    called_with: str = "no arguments",
) -> object:
    """Call ``obj`` with ``args`` when it is a class or a factory; return it as is
    when it already is a plugin (``is_plugin``)."""
    if isinstance(obj, type) or (callable(obj) and not is_plugin(obj)):
        try:
            return obj(*args)
        except Exception as exc:
            raise error(ref, f"calling it with {called_with} failed: {exc!r}") from exc
    return obj


def entry_point_objects(
    group: str,
    *,
    is_plugin: Callable[[object], bool],
    args: tuple[object, ...] = (),
    error: LoadError,
    called_with: str = "no arguments",
) -> Iterator[tuple[str, object]]:
    """Each entry point of ``group``, loaded and instantiated, with a reference
    naming it for error messages."""
    for ep in entry_points(group=group):
        ref = f"entry point {ep.name!r} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise error(ref, f"cannot load: {exc!r}") from exc
        yield (
            ref,
            instantiate(
                ref, obj, is_plugin=is_plugin, args=args, error=error, called_with=called_with
            ),
        )


def _worker(ref: str, obj: object) -> Worker:
    obj = instantiate(ref, obj, is_plugin=lambda o: hasattr(o, "run"), error=WorkerLoadError)
    if not isinstance(obj, Worker):
        raise WorkerLoadError(ref, "is not a worker: it needs 'name', 'interval' and 'run(ctx)'")
    return obj


def load_worker(ref: str) -> Worker:
    """Load the worker ``"package.module:Attr"``.

    Raises:
        WorkerLoadError: naming the reference and what went wrong.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise WorkerLoadError(ref, "use the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise WorkerLoadError(ref, f"cannot import {module_name!r}: {exc!r}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise WorkerLoadError(ref, f"{module_name!r} has no attribute {attr!r}") from None
    return _worker(ref, obj)


def entry_point_workers(group: str = ENTRY_POINT_GROUP) -> list[Worker]:
    """Workers that installed packages declare in the ``ctrlplane.workers`` entry-point group."""
    return [
        _worker(ref, obj)
        for ref, obj in entry_point_objects(
            group, is_plugin=lambda o: hasattr(o, "run"), error=WorkerLoadError
        )
    ]


def keyed(
    builtins: dict[str, T],
    loaded: Iterable[tuple[str, T]],
    *,
    key: Callable[[T], str],
    error: LoadError,
    what: str,
) -> dict[str, T]:
    """``builtins`` with the ``loaded`` plugins added under ``key``.

    A plugin may replace a built-in of the same key; two plugins may not
    share one (the error names both entry points).
    """
    out = dict(builtins)
    taken: dict[str, str] = {}
    for ref, plugin in loaded:
        name = key(plugin)
        if name in taken:
            raise error(ref, f"the {what} {name!r} is provided by {taken[name]} already")
        taken[name] = ref
        out[name] = plugin
    return out


async def close_all(plugins: Mapping[str, object] | Iterable[object], what: str) -> None:
    """Call ``close()`` (sync or async) once on every plugin that has one.

    One whose ``close`` fails is logged and the others are still closed.
    """
    values = plugins.values() if isinstance(plugins, Mapping) else plugins
    seen: set[int] = set()
    for plugin in values:
        close = getattr(plugin, "close", None)
        if id(plugin) in seen or not callable(close):
            continue
        seen.add(id(plugin))
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(f"closing a {what} failed", plugin=repr(plugin))
