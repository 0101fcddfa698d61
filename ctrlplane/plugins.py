"""Loading plugins: ``module:attr`` references and entry points.

Workers, providers and checkers are all found the same way: an entry point
(or a reference in the config) names a class or factory, which is called,
or an object, which is used as it is. Each kind then checks the shape of
what it got.
"""

from __future__ import annotations

import inspect
import keyword
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import TypeVar

from ctrlplane.actors.types import Worker
from ctrlplane.errors import WorkerLoadError

ENTRY_POINT_GROUP = "ctrlplane.workers"
T = TypeVar("T")

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


def reference_problem(ref: str) -> str | None:
    """Why ``ref`` is not a worker reference ``package.module:Name``, or None if it is.

    The one check of the form, for the config (which says which field) and for
    :func:`load_worker`. Stricter than :func:`pkgutil.resolve_name`, which also
    takes a reference without a colon, and so a typo, as a module path.
    """
    module, colon, attr = ref.partition(":")
    if colon and all(_is_identifier(p) for p in module.split(".")) and _is_identifier(attr):
        return None
    return (
        f"{ref!r} is not a worker reference: use 'package.module:Name', "
        "a dotted module path, a colon and a class or attribute name"
    )


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def load_worker(ref: str) -> Worker:
    """Load the worker ``"package.module:Name"``.

    Raises:
        WorkerLoadError: naming the reference and what went wrong.
    """
    problem = reference_problem(ref)
    if problem is not None:
        raise WorkerLoadError(ref, problem)
    module, _, attr = ref.partition(":")
    try:
        obj = pkgutil.resolve_name(ref)
    except Exception as exc:
        # A module that failed to import is not left in sys.modules: one that is
        # there was imported, and only the attribute is missing.
        if isinstance(exc, AttributeError) and module in sys.modules:
            raise WorkerLoadError(ref, f"{module!r} has no attribute {attr!r}") from None
        raise WorkerLoadError(ref, f"cannot import {module!r}: {exc!r}") from exc
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
    import structlog  # here: the config imports this module for reference_problem

    log = structlog.get_logger("ctrlplane.plugins")
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
