"""Loading custom workers from ``module:attr`` references and entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ctrlplane.actors.types import Worker
from ctrlplane.errors import WorkerLoadError

ENTRY_POINT_GROUP = "ctrlplane.workers"


def _instantiate(ref: str, obj: object) -> Worker:
    """A class (or factory) is called with no arguments; an instance is used as is."""
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "run")):
        try:
            obj = obj()
        except Exception as exc:
            raise WorkerLoadError(ref, f"calling it with no arguments failed: {exc!r}") from exc
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
    return _instantiate(ref, obj)


def entry_point_workers(group: str = ENTRY_POINT_GROUP) -> list[Worker]:
    """Workers that installed packages declare in the ``ctrlplane.workers`` entry-point group."""
    workers = []
    for ep in entry_points(group=group):
        ref = f"entry point {ep.name!r} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise WorkerLoadError(ref, f"cannot load: {exc!r}") from exc
        workers.append(_instantiate(ref, obj))
    return workers
