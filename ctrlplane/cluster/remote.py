"""Starting and stopping an instance on the node it is placed on, from any node.

A host-bound instance's process can only be started, signalled and watched on
its own host. ``apply`` and the remediator may run on any node (the API is a
queue group; events go to whichever process takes them), so when they must
start or stop another node's instance they ask that node, with a request on
``<prefix>.internal.node.<node>.lifecycle``, and it does the work through its own
inventory: recording each step and publishing the events as it would for a
change of its own. Only the ``service`` role may use that subject (the
``admin`` and ``observer`` users may call only the endpoints named in
:mod:`ctrlplane.security`), and no stream captures ``<prefix>.internal.>``. It is internal, not
part of the control API: its subject is outside ``<prefix>.api.>`` so that
the API's unknown-endpoint answer never races a node's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from datetime import timedelta
from typing import Any

import msgspec
import nats.errors
import structlog
from msgspec import Struct, field
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ctrlplane.bus.codec import decode, encode
from ctrlplane.bus.connection import Bus
from ctrlplane.errors import CtrlplaneError
from ctrlplane.inventory import Inventory, InventoryError
from ctrlplane.store.db import Store
from ctrlplane.store.instances import Instance

__all__ = ["Action", "LifecycleReply", "LifecycleRequest", "NodeLifecycle", "RemoteLifecycle"]

log = structlog.get_logger("ctrlplane.cluster.remote")

QUEUE = "ctrlplane-node"
"""The queue group of a node's processes for its lifecycle requests."""

START_WAIT = timedelta(seconds=30)
"""How long a node is given to start an instance (a process starts in milliseconds)."""


class Action(enum.StrEnum):
    """What a node is asked to do with one of its instances."""

    START = "start"
    STOP = "stop"
    RELEASE = "release"
    """Stop its process for a removal; the caller records the rest."""


class LifecycleRequest(Struct, frozen=True, kw_only=True):
    """Ask the instance's node to act on it.

    Attributes:
        action: What to do.
        instance_id: Which instance; the node reads it from the store.
        event: ``start``: the event to publish once it runs.
        data: ``start``: extra ``data`` of that event (a restart's attempt).
    """

    action: Action
    instance_id: str
    event: str = "instance.started"
    data: dict[str, Any] = field(default_factory=dict)


class LifecycleReply(Struct, frozen=True, kw_only=True):
    """The node's answer: the instance as recorded after, or why it could not."""

    instance: Instance | None = None
    error: str | None = None


def lifecycle_subject(bus: Bus, node: str) -> str:
    """Where ``node`` takes lifecycle requests."""
    return bus.subjects.internal(f"node.{node}.lifecycle")


class RemoteLifecycle:
    """The inventory's way to another node (:class:`ctrlplane.inventory.Remote`).

    Args:
        bus: The connected bus.
        stop_grace: How long an instance gets to stop; a stop request waits
            that long and ten seconds more.
    """

    def __init__(self, bus: Bus, *, stop_grace: timedelta) -> None:
        self._bus = bus
        self._stop_wait = stop_grace + timedelta(seconds=10)

    async def start(self, instance: Instance, *, event: str, data: dict[str, Any]) -> Instance:
        request = LifecycleRequest(
            action=Action.START, instance_id=instance.id, event=event, data=data
        )
        return await self._ask(instance, request, START_WAIT)

    async def stop(self, instance: Instance) -> Instance:
        request = LifecycleRequest(action=Action.STOP, instance_id=instance.id)
        return await self._ask(instance, request, self._stop_wait)

    async def release(self, instance: Instance) -> None:
        request = LifecycleRequest(action=Action.RELEASE, instance_id=instance.id)
        await self._ask(instance, request, self._stop_wait)

    async def _ask(
        self, instance: Instance, request: LifecycleRequest, within: timedelta
    ) -> Instance:
        """Send ``request`` to the instance's node.

        Raises:
            InventoryError: the node did not answer, or answered with an error.
        """
        node = instance.node
        assert node is not None  # only placed instances are another node's
        try:
            msg = await self._bus.nc.request(
                lifecycle_subject(self._bus, node),
                encode(request),
                timeout=within.total_seconds(),
            )
        except nats.errors.NoRespondersError:
            raise InventoryError(
                instance.name, f"its node {node!r} is not reachable, so it cannot {request.action}"
            ) from None
        except nats.errors.TimeoutError:
            raise InventoryError(
                instance.name,
                f"its node {node!r} did not answer within {within.total_seconds():g}s "
                f"({request.action})",
            ) from None
        try:
            reply = msgspec.json.decode(msg.data, type=LifecycleReply)
        except Exception as exc:  # whoever answered is untrusted too
            raise InventoryError(
                instance.name, f"undecodable answer from {node!r}: {exc}"
            ) from None
        if reply.error is not None:
            raise InventoryError(instance.name, f"on node {node!r}: {reply.error}")
        return reply.instance or instance


class NodeLifecycle:
    """Answers lifecycle requests for the instances placed on this node.

    Each request is handled in a task of its own, so a slow stop does not
    hold the others up; :meth:`stop` waits for those in flight, up to ``grace``.
    """

    def __init__(self, bus: Bus, store: Store, inventory: Inventory, node: str) -> None:
        self._bus = bus
        self._store = store
        self._inventory = inventory
        self._node = node
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # A queue group: of several processes of one node, one acts on each request.
        self._sub = await self._bus.nc.subscribe(
            lifecycle_subject(self._bus, self._node), queue=QUEUE, cb=self._on_request
        )

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            reply = LifecycleReply(instance=await self._act(msg.data, msg.subject))
        except CtrlplaneError as exc:
            reply = LifecycleReply(error=str(exc))
        except Exception as exc:  # a bad request must never hurt the process
            log.exception("lifecycle request failed")
            reply = LifecycleReply(error=f"internal error: {exc!r}")
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode(reply))

    async def _act(self, payload: bytes, subject: str) -> Instance | None:
        try:
            request = decode(payload, LifecycleRequest, subject)
        except Exception as exc:  # untrusted input: every failure is a bad request
            raise CtrlplaneError(f"bad lifecycle request: {exc}") from None
        inv = self._inventory
        # As recorded now: the store is shared, and the caller wrote before it asked.
        instance = await self._store.instances.get(request.instance_id)
        if not inv.runs_here(instance):
            # Moved since the caller read it: never pass the request on,
            # so two nodes cannot bounce it between them.
            raise InventoryError(
                instance.name,
                f"it is placed on node {instance.node!r}, not on {self._node!r}: read it again",
            )
        if request.action is Action.START:
            return await inv.start(instance, event=request.event, **request.data)
        if request.action is Action.STOP:
            return await inv.stop(instance)
        await inv.release(instance)
        return None

    async def stop(self, grace: timedelta = timedelta(seconds=10)) -> None:
        """Take no more requests; give those in flight ``grace`` to finish."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace.total_seconds())
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
