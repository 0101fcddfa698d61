"""The domain's control API on NATS: apply declarations, list instances and health.

Requests go to a queue group, so exactly one process answers; every process
of one host shares the SQLite store, so any of them can.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

import msgspec
import nats.errors
import structlog
from msgspec import Struct
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ctrlplane.bus.codec import decode, encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import DecodeError
from ctrlplane.errors import CtrlplaneError
from ctrlplane.inventory import ApplyResult, InstanceDecl, Inventory
from ctrlplane.store.db import Store
from ctrlplane.store.health import CheckState, HealthStatus, worst
from ctrlplane.store.instances import Instance

log = structlog.get_logger("ctrlplane.api")

QUEUE = "ctrlplane-api"
R = TypeVar("R", bound="Reply")


class ApplyRequest(Struct, frozen=True, kw_only=True):
    instances: list[InstanceDecl]


class Reply(Struct, frozen=True, kw_only=True):
    """Every answer: ``error`` set when the request failed."""

    error: str | None = None


class ApplyReply(Reply, frozen=True, kw_only=True):
    result: ApplyResult | None = None


class CheckView(Struct, frozen=True, kw_only=True):
    """A check as ``ctrlplane health`` shows it."""

    instance: str
    instance_id: str
    check: str
    type: str
    status: HealthStatus
    last_checked: datetime | None
    last_message: str | None
    last_latency: timedelta | None
    changed: datetime | None
    consecutive_passes: int
    consecutive_failures: int


class InstanceView(Struct, frozen=True, kw_only=True):
    """An instance as ``ctrlplane instances`` shows it."""

    id: str
    name: str
    provider: str
    desired: str
    state: str
    health: HealthStatus
    handle: str | None
    state_error: str | None
    command: list[str]
    updated: datetime


class InstancesReply(Reply, frozen=True, kw_only=True):
    instances: list[InstanceView] = []


class HealthReply(Reply, frozen=True, kw_only=True):
    checks: list[CheckView] = []


def check_view(instance: Instance, state: CheckState) -> CheckView:
    return CheckView(
        instance=instance.name,
        instance_id=instance.id,
        check=state.name,
        type=state.spec.type,
        status=state.status,
        last_checked=state.last_checked,
        last_message=state.last_message,
        last_latency=state.last_latency,
        changed=state.changed,
        consecutive_passes=state.consecutive_passes,
        consecutive_failures=state.consecutive_failures,
    )


class DomainApi:
    """Answers ``<prefix>.api.apply``, ``.instances`` and ``.health``."""

    def __init__(self, bus: Bus, store: Store, inventory: Inventory) -> None:
        self._bus = bus
        self._store = store
        self._inventory = inventory
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        routes: dict[str, Callable[[bytes], Awaitable[Reply]]] = {
            "apply": self._apply,
            "instances": self._instances,
            "health": self._health,
        }
        for name, handler in routes.items():
            sub = await self._bus.nc.subscribe(
                self._bus.subjects.api(name), queue=QUEUE, cb=self._wrap(name, handler)
            )
            self._subs.append(sub)

    def _wrap(
        self, name: str, handler: Callable[[bytes], Awaitable[Reply]]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def on_request(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
            except (CtrlplaneError, DecodeError) as exc:
                reply = Reply(error=str(exc))
            except Exception as exc:  # a bad request must never hurt the process
                log.exception("control request failed", api=name)
                reply = Reply(error=f"internal error: {exc!r}")
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(encode(reply))

        return on_request

    async def _apply(self, payload: bytes) -> ApplyReply:
        request = decode(payload, ApplyRequest, self._bus.subjects.api("apply"))
        return ApplyReply(result=await self._inventory.apply(request.instances))

    async def _instances(self, payload: bytes) -> InstancesReply:
        states = await self._store.health.states()
        views = []
        for i in await self._store.instances.all():
            mine = [s.status for s in states if s.instance_id == i.id]
            views.append(
                InstanceView(
                    id=i.id,
                    name=i.name,
                    provider=i.provider,
                    desired=i.desired.value,
                    state=i.state.value,
                    health=worst(mine) if mine else HealthStatus.UNKNOWN,
                    handle=i.handle,
                    state_error=i.state_error,
                    command=i.spec.command,
                    updated=i.updated,
                )
            )
        return InstancesReply(instances=views)

    async def _health(self, payload: bytes) -> HealthReply:
        instances = {i.id: i for i in await self._store.instances.all()}
        checks = [
            check_view(instances[s.instance_id], s)
            for s in await self._store.health.states()
            if s.instance_id in instances
        ]
        return HealthReply(checks=checks)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


async def request(bus: Bus, name: str, body: object, reply_type: type[R], *, within: float) -> R:
    """Send a control request and decode its answer.

    Raises:
        CtrlplaneError: no process answered in time, or it answered with an error.
    """
    try:
        msg = await bus.nc.request(bus.subjects.api(name), encode(body), timeout=within)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        subject = bus.subjects.api(name)
        raise CtrlplaneError(
            f"no ctrlplane process answered on {subject}: is `ctrlplane run` running?"
        ) from None
    reply = msgspec.json.decode(msg.data, type=reply_type)
    if reply.error:
        raise CtrlplaneError(reply.error)
    return reply
