"""The domain's control API on NATS: apply declarations, list instances and health.

Requests go to a queue group, so exactly one process answers; every process
of one host shares the SQLite store, so any of them can.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
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
from ctrlplane.certs.renewal import renewal_time
from ctrlplane.cluster.nodes import NodeInfo, NodeRegistry
from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl, DomainError, apply_domains, domain_problems
from ctrlplane.errors import CtrlplaneError
from ctrlplane.inventory import ApplyResult, Inventory
from ctrlplane.limits import MAX_LIMIT, MAX_SINCE
from ctrlplane.store.certs import DomainSync
from ctrlplane.store.db import Store
from ctrlplane.store.deployments import Deployment
from ctrlplane.store.health import CheckState, HealthStatus, worst
from ctrlplane.store.instances import Instance
from ctrlplane.store.telemetry import Metric, ResourceSnapshot
from ctrlplane.types import Router

log = structlog.get_logger("ctrlplane.api")

QUEUE = "ctrlplane-api"
R = TypeVar("R", bound="Reply")
T = TypeVar("T")


class BadRequestError(CtrlplaneError):
    """A control request that cannot be decoded or asks for something out of range.

    Attributes:
        subject: Where the request was sent.
        reason: What is wrong with it.
    """

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bad request on {subject}: {reason}")

    def __reduce__(self) -> tuple[type[BadRequestError], tuple[str, str]]:
        return type(self), (self.subject, self.reason)


def decode_request(payload: bytes, type_: type[T], subject: str) -> T:
    """Decode a control request; every failure (deep nesting included) is a bad request.

    Raises:
        BadRequestError: the payload is not a valid ``type_``.
    """
    try:
        return decode(payload, type_, subject)
    except DecodeError as exc:
        raise BadRequestError(subject, exc.reason) from None
    except Exception as exc:  # untrusted input: RecursionError, OverflowError, ...
        raise BadRequestError(subject, f"{type(exc).__name__}: {exc}") from None


class ApplyRequest(Struct, frozen=True, kw_only=True):
    """``domains``: ``None`` leaves the recorded domains as they are."""

    instances: list[InstanceDecl]
    domains: list[DomainDecl] | None = None


class Reply(Struct, frozen=True, kw_only=True):
    """Every answer: ``error`` set when the request failed."""

    error: str | None = None


class ApplyReply(Reply, frozen=True, kw_only=True):
    result: ApplyResult | None = None
    domains: DomainSync | None = None


class CertView(Struct, frozen=True, kw_only=True):
    """A domain and its current certificate, as ``ctrlplane certs`` shows them."""

    hostname: str
    instance: str
    issuer: str
    auto_renew: bool
    serial: str | None
    not_before: datetime | None
    not_after: datetime | None
    time_left: timedelta | None
    renew_at: datetime | None
    """When the CertRenewer renews it (jitter included)."""
    cert_path: str | None
    failures: int
    next_attempt: datetime | None
    last_error: str | None


class CertsReply(Reply, frozen=True, kw_only=True):
    certs: list[CertView] = []


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
    node: str | None = None
    """The node it is placed on (host-bound providers); null when not placed."""


class InstancesReply(Reply, frozen=True, kw_only=True):
    instances: list[InstanceView] = []


class HealthReply(Reply, frozen=True, kw_only=True):
    checks: list[CheckView] = []


class DeploymentsRequest(Struct, frozen=True, kw_only=True):
    """``instance``: one instance's (name or id), or all; the newest ``limit``
    (at most :data:`MAX_LIMIT`)."""

    instance: str | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        # A ValueError here is a decode failure (msgspec's ValidationError): the
        # store would otherwise fail on an integer SQLite cannot hold.
        if self.limit > MAX_LIMIT:
            raise ValueError(f"limit must be at most {MAX_LIMIT}, got {self.limit}")


class DeploymentsReply(Reply, frozen=True, kw_only=True):
    deployments: list[Deployment] = []


class TelemetryRequest(Struct, frozen=True, kw_only=True):
    """One instance's (name or id) telemetry: metrics collected in the last ``since``."""

    instance: str
    since: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.since <= MAX_SINCE:
            raise ValueError(f"since must be between 0s and {MAX_SINCE.days}d")


class TelemetryReply(Reply, frozen=True, kw_only=True):
    """The newest snapshot and the newest value of each series (name and labels)."""

    instance: str = ""
    instance_id: str = ""
    snapshot: ResourceSnapshot | None = None
    metrics: list[Metric] = []


class NodesReply(Reply, frozen=True, kw_only=True):
    """The cluster's nodes, as the answering process sees them.

    Attributes:
        node: The answering process's node.
        store_id: The identity of the answering process's store.
        nodes: Every node heard from lately, live or not.
    """

    node: str = ""
    store_id: str = ""
    nodes: list[NodeInfo] = []


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
    """Answers ``<prefix>.api.apply``, ``.instances``, ``.health`` and ``.deployments``.

    Args:
        allow_apply: Whether ``apply`` is served (``Config.api_apply``); when
            False it is answered with an error and changes nothing.
    """

    def __init__(
        self,
        bus: Bus,
        store: Store,
        inventory: Inventory,
        *,
        router: Router | None = None,
        allow_apply: bool = True,
        nodes: NodeRegistry | None = None,
    ) -> None:
        self._allow_apply = allow_apply
        self._nodes = nodes
        self._bus = bus
        self._store = store
        self._inventory = inventory
        self._router = router
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        routes: dict[str, Callable[[bytes], Awaitable[Reply]]] = {
            "apply": self._apply,
            "instances": self._instances,
            "health": self._health,
            "telemetry": self._telemetry,
            "deployments": self._deployments,
            "certs": self._certs,
            "nodes": self._nodes_reply,
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
        if not self._allow_apply:
            # Refused before decoding: nothing of the request is acted on.
            raise CtrlplaneError(
                "apply over NATS is turned off on this control plane (api_apply = false); "
                "declare instances and domains in its config file"
            )
        request = decode_request(payload, ApplyRequest, self._bus.subjects.api("apply"))
        if request.domains is None:
            return ApplyReply(result=await self._inventory.apply(request.instances))
        # Checked before any instance is touched: a bad domain applies nothing.
        names = [i.name for i in request.instances]
        problems = domain_problems(request.domains, names)
        if problems:
            raise DomainError(problems)
        if self._router is None:
            raise CtrlplaneError("this process has no router: domains cannot be applied")
        result = await self._inventory.apply(request.instances)
        synced = await apply_domains(
            self._store,
            self._router,
            request.domains,
            self._bus.publish_event,
            source="api.apply",
            instances=names,
        )
        return ApplyReply(result=result, domains=synced)

    async def _certs(self, payload: bytes) -> CertsReply:
        now = datetime.now(UTC)
        current = await self._store.certificates.all_current()
        views = []
        for d in await self._store.domains.all():
            cert = current.get(d.hostname)
            views.append(
                CertView(
                    hostname=d.hostname,
                    instance=d.instance,
                    issuer=d.issuer,
                    auto_renew=d.auto_renew,
                    serial=None if cert is None else cert.serial,
                    not_before=None if cert is None else cert.not_before,
                    not_after=None if cert is None else cert.not_after,
                    time_left=None if cert is None else cert.not_after - now,
                    renew_at=None if cert is None else renewal_time(cert, d),
                    cert_path=None if cert is None else cert.cert_path,
                    failures=d.failures,
                    next_attempt=d.next_attempt,
                    last_error=d.last_error,
                )
            )
        return CertsReply(certs=views)

    async def _instances(self, payload: bytes) -> InstancesReply:
        states = await self._store.health.states(with_last=False)
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
                    node=i.node,
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

    async def _deployments(self, payload: bytes) -> DeploymentsReply:
        request = decode_request(payload, DeploymentsRequest, self._bus.subjects.api("deployments"))
        found = await self._store.deployments.list(
            instance=request.instance, limit=max(1, request.limit)
        )
        return DeploymentsReply(deployments=found)

    async def _telemetry(self, payload: bytes) -> TelemetryReply:
        request = decode_request(payload, TelemetryRequest, self._bus.subjects.api("telemetry"))
        instance = await self._store.instances.find(request.instance)
        if instance is None:
            raise CtrlplaneError(f"no instance {request.instance!r}")
        since = datetime.now(UTC) - request.since
        return TelemetryReply(
            instance=instance.name,
            instance_id=instance.id,
            snapshot=await self._store.telemetry.latest_snapshot(instance.id),
            metrics=await self._store.telemetry.latest_metrics(instance.id, since),
        )

    async def _nodes_reply(self, payload: bytes) -> NodesReply:
        if self._nodes is None:
            raise CtrlplaneError("this process keeps no node registry")
        counts = await self._store.instances.count_by_node()
        nodes = [
            msgspec.structs.replace(n, instances=counts.get(n.name, 0)) for n in self._nodes.nodes()
        ]
        return NodesReply(node=self._nodes.name, store_id=self._store.identity, nodes=nodes)

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
    try:
        reply = msgspec.json.decode(msg.data, type=reply_type)
    except Exception as exc:  # whoever answered is untrusted too
        raise CtrlplaneError(f"undecodable answer on {bus.subjects.api(name)}: {exc}") from None
    if reply.error:
        raise CtrlplaneError(reply.error)
    return reply
