"""The handlers of ``worker_pause``, ``worker_resume`` and ``worker_run``.

Pauses are written to the worker controls bucket, which every process follows
(:class:`~ctrlplane.bus.controls.WorkerControls`); a run-now request is put on
the worker's tick subject, so its tick consumer (one message out at a time in
the cluster) hands it to one process after any run in progress.
"""

from __future__ import annotations

import difflib
from datetime import timedelta

from ctrlplane.actors.info import Scope, WorkerInfo, WorkerKind
from ctrlplane.actors.scheduler import Scheduler
from ctrlplane.api.client import list_workers
from ctrlplane.api.errors import NotFoundError, RefusedError, UnavailableError
from ctrlplane.api.messages import (
    WorkerControlReply,
    WorkerControlRequest,
    WorkerRunReply,
    WorkerRunRequest,
)
from ctrlplane.api.service import Handler
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.controls import (
    ControlError,
    new_run_request,
    pause_control,
    publish_run_request,
)
from ctrlplane.cluster.nodes import NodeRegistry

__all__ = ["ControlApi"]

ANONYMOUS = "api"
"""``by`` of a request that does not say who asks."""

_ASK_OTHERS = timedelta(seconds=1)


class ControlApi:
    """Answers ``worker_pause``, ``worker_resume`` and ``worker_run``.

    Args:
        bus: The process's bus.
        scheduler: The process's (started) scheduler: its workers and controls.
        nodes: The node registry, for the live nodes a node-scoped worker runs on.
    """

    def __init__(self, bus: Bus, scheduler: Scheduler, nodes: NodeRegistry | None = None) -> None:
        self._bus = bus
        self._scheduler = scheduler
        self._nodes = nodes

    def handlers(self) -> dict[str, Handler]:
        """Endpoint name to handler, for :class:`~ctrlplane.api.service.ApiService`."""
        return {
            "worker_pause": self.pause,
            "worker_resume": self.resume,
            "worker_run": self.run,
        }

    async def _find(self, name: str) -> WorkerInfo:
        """The worker called ``name``: this process's, or else another's.

        Raises:
            NotFoundError: no process runs a worker of that name.
        """
        local = self._scheduler.workers()
        for info in local:
            if info.name == name:
                return info
        # Processes may run different workers: ask the others before saying no.
        names = {w.name for w in local}
        for reply in await list_workers(self._bus, within=_ASK_OTHERS):
            for info in reply.workers:
                if info.name == name:
                    return info
                names.add(info.name)
        close = difflib.get_close_matches(name, sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NotFoundError(f"no worker {name!r}{hint}")

    async def _set(self, request: WorkerControlRequest, paused: bool) -> WorkerControlReply:
        info = await self._find(request.worker)
        if info.kind is WorkerKind.ONCE:
            raise RefusedError(
                f"worker {info.name!r} runs once at start: there is nothing to pause or resume"
            )
        controls = self._scheduler.controls
        try:
            current = await controls.read(info.name)
            if (current is not None and current.paused) == paused:
                return WorkerControlReply(
                    worker=info.name,
                    paused=paused,
                    changed=False,
                    by=None if current is None else current.by,
                    at=None if current is None else current.at,
                )
            control = pause_control(paused, request.by or ANONYMOUS)
            await controls.put(info.name, control)
        except ControlError as exc:
            raise UnavailableError(f"worker controls unavailable: {exc.reason}") from exc
        return WorkerControlReply(
            worker=info.name, paused=paused, changed=True, by=control.by, at=control.at
        )

    async def pause(self, request: WorkerControlRequest) -> WorkerControlReply:
        """Pause ``request.worker`` everywhere (a no-op if it is paused)."""
        return await self._set(request, paused=True)

    async def resume(self, request: WorkerControlRequest) -> WorkerControlReply:
        """Resume ``request.worker`` everywhere (a no-op if it is not paused)."""
        return await self._set(request, paused=False)

    async def run(self, request: WorkerRunRequest) -> WorkerRunReply:
        """Ask for one extra run of a periodic worker (on each node asked)."""
        info = await self._find(request.worker)
        name = info.name
        if info.kind is WorkerKind.EVENT:
            raise RefusedError(
                f"worker {name!r} is event-driven: it runs when its events arrive "
                f"({', '.join(info.subscriptions)}); publish one to run it"
            )
        if info.kind is WorkerKind.ONCE:
            raise RefusedError(f"worker {name!r} runs once at start: it cannot be run again")
        nodes: list[str | None]
        if info.scope is Scope.NODE:
            nodes = [request.node] if request.node else list(self._live_nodes())
        elif request.node is not None:
            raise RefusedError(f"worker {name!r} is cluster-scoped: it takes no node")
        else:
            nodes = [None]
        try:
            control = await self._scheduler.controls.read(name)
        except ControlError as exc:
            raise UnavailableError(f"worker controls unavailable: {exc.reason}") from exc
        if control is not None and control.paused:
            since = control.at.isoformat(timespec="seconds")
            raise RefusedError(
                f"worker {name!r} is paused (by {control.by} at {since}): "
                f"`ctrlplane worker resume {name}` first"
            )
        by = request.by or ANONYMOUS
        refs = []
        for node in nodes:
            run = new_run_request(name, by, node)
            try:
                await publish_run_request(self._bus, run)
            except ControlError as exc:
                raise UnavailableError(f"run of {name!r} not requested: {exc.reason}") from exc
            refs.append(run.ref)
        return WorkerRunReply(
            worker=name,
            refs=refs,
            nodes=None if info.scope is Scope.CLUSTER else [n for n in nodes if n is not None],
        )

    def _live_nodes(self) -> list[str]:
        if self._nodes is not None:
            return self._nodes.live()
        node = self._scheduler.node
        return [] if node is None else [node]
