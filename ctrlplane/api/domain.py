"""The handlers of the domain's endpoints: apply declarations, list instances, health, ..."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from ctrlplane.api.deadletters import (
    get_letter,
    list_letters,
    purge_letters,
    replay_letter,
    replay_worker,
)
from ctrlplane.api.errors import ForbiddenError, NotFoundError, UnavailableError
from ctrlplane.api.messages import (
    ApplyReply,
    ApplyRequest,
    CertsReply,
    CertsRequest,
    CertView,
    CheckView,
    DeadLetterView,
    DeploymentsReply,
    DeploymentsRequest,
    DescribeReply,
    DescribeRequest,
    DlqListReply,
    DlqListRequest,
    DlqPurgeReply,
    DlqPurgeRequest,
    DlqReplayReply,
    DlqReplayRequest,
    DlqReplaySkipped,
    DlqShowReply,
    DlqShowRequest,
    HealthReply,
    HealthRequest,
    InstancesReply,
    InstancesRequest,
    InstanceView,
    NodesReply,
    NodesRequest,
    RunsReply,
    RunsRequest,
    RunView,
    TelemetryReply,
    TelemetryRequest,
)
from ctrlplane.api.service import Handler
from ctrlplane.bus.connection import Bus
from ctrlplane.certs.renewal import renewal_time
from ctrlplane.cluster.nodes import NodeRegistry
from ctrlplane.domains import DomainError, apply_domains, domain_problems
from ctrlplane.inventory import ApplyResult, Inventory
from ctrlplane.plan import Action, ApplyPlan, plan_domains
from ctrlplane.store.certs import DomainSync
from ctrlplane.store.db import Store
from ctrlplane.store.health import CheckState, HealthStatus, worst
from ctrlplane.store.instances import Instance
from ctrlplane.store.runs import WorkerRun
from ctrlplane.types import Router

__all__ = ["DomainApi", "check_view", "run_view"]


def run_view(run: WorkerRun) -> RunView:
    """``run`` as the ``runs`` endpoint answers it."""
    took: timedelta | None = None
    if run.finished is not None:
        took = run.finished - run.started
    return RunView(
        id=run.id,
        worker=run.worker,
        process=run.process,
        trigger=run.trigger,
        ref=run.trigger_ref,
        attempt=run.attempt,
        started=run.started,
        finished=run.finished,
        duration=took,
        outcome=run.outcome,
        error=run.error,
    )


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
    """Answers ``apply``, ``instances``, ``health``, ``telemetry``, ``deployments``,
    ``certs``, ``nodes``, ``runs`` and ``dlq_list``, ``dlq_show``, ``dlq_purge``
    and ``dlq_replay``
    (served by :class:`~ctrlplane.api.service.ApiService`).

    Args:
        allow_apply: Whether ``apply`` is served (``Config.api_apply``); when
            False it is answered with a 403 and changes nothing.
        nodes: The node registry; without one ``nodes`` answers 503.
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

    def handlers(self) -> dict[str, Handler]:
        """Endpoint name to handler, for :class:`~ctrlplane.api.service.ApiService`."""
        return {
            "apply": self.apply,
            "instances": self.instances,
            "health": self.health,
            "telemetry": self.telemetry,
            "deployments": self.deployments,
            "certs": self.certs,
            "nodes": self.nodes,
            "runs": self.runs,
            "dlq_list": self.dlq_list,
            "dlq_show": self.dlq_show,
            "dlq_purge": self.dlq_purge,
            "dlq_replay": self.dlq_replay,
            "describe": self.describe,
        }

    async def apply(self, request: ApplyRequest) -> ApplyReply:
        if not self._allow_apply:
            raise ForbiddenError(
                "apply over NATS is turned off on this control plane (api_apply = false); "
                "declare instances and domains in its config file"
            )
        if request.dry_run:
            return await self._plan(request)
        if request.domains is None:
            return ApplyReply(result=await self._inventory.apply(request.instances))
        # Checked before any instance is touched: a bad domain applies nothing.
        names = [i.name for i in request.instances]
        problems = domain_problems(request.domains, names)
        if problems:
            raise DomainError(problems)
        if self._router is None:
            raise UnavailableError("this process has no router: domains cannot be applied")
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

    async def certs(self, request: CertsRequest) -> CertsReply:
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

    async def instances(self, request: InstancesRequest) -> InstancesReply:
        states = await self._store.health.states(with_last=False)
        views = []
        for i in await self._store.instances.all():
            mine = [s.status for s in states if s.instance_id == i.id]
            views.append(
                InstanceView(
                    id=i.id,
                    name=i.name,
                    provider=i.provider,
                    desired=i.desired,
                    state=i.state,
                    health=worst(mine) if mine else HealthStatus.UNKNOWN,
                    handle=i.handle,
                    state_error=i.state_error,
                    command=i.spec.command,
                    updated=i.updated,
                    node=i.node,
                )
            )
        return InstancesReply(instances=views)

    async def health(self, request: HealthRequest) -> HealthReply:
        instances = {i.id: i for i in await self._store.instances.all()}
        checks = [
            check_view(instances[s.instance_id], s)
            for s in await self._store.health.states()
            if s.instance_id in instances
        ]
        return HealthReply(checks=checks)

    async def deployments(self, request: DeploymentsRequest) -> DeploymentsReply:
        found = await self._store.deployments.list(instance=request.instance, limit=request.limit)
        # An empty list must not hide a typo; a removed instance's deployments
        # are still listed by the name it had.
        if (
            not found
            and request.instance is not None
            and await self._store.instances.find(request.instance) is None
        ):
            raise NotFoundError(f"no instance {request.instance!r}")
        return DeploymentsReply(deployments=found)

    async def telemetry(self, request: TelemetryRequest) -> TelemetryReply:
        instance = await self._store.instances.find(request.instance)
        if instance is None:
            raise NotFoundError(f"no instance {request.instance!r}")
        since = datetime.now(UTC) - request.since
        return TelemetryReply(
            instance=instance.name,
            instance_id=instance.id,
            snapshot=await self._store.telemetry.latest_snapshot(instance.id),
            metrics=await self._store.telemetry.latest_metrics(instance.id, since),
        )

    async def nodes(self, request: NodesRequest) -> NodesReply:
        if self._nodes is None:
            raise UnavailableError("this process keeps no node registry")
        counts = await self._store.instances.count_by_node()
        nodes = [
            msgspec.structs.replace(n, instances=counts.get(n.name, 0)) for n in self._nodes.nodes()
        ]
        return NodesReply(node=self._nodes.name, store_id=self._store.identity, nodes=nodes)

    async def runs(self, request: RunsRequest) -> RunsReply:
        found = await self._store.runs.list(
            worker=request.worker,
            outcome=request.outcome,
            since=datetime.now(UTC) - request.since,
            limit=request.limit,
        )
        return RunsReply(runs=[run_view(r) for r in found])

    async def dlq_list(self, request: DlqListRequest) -> DlqListReply:
        found = await list_letters(self._bus, request.worker, request.limit)
        return DlqListReply(
            letters=[
                DeadLetterView(
                    id=seq,
                    worker=letter.worker,
                    subject=letter.subject,
                    reason=letter.reason,
                    attempts=letter.attempts,
                    time=letter.time,
                    size=letter.size,
                    replay_of=letter.replay_of,
                )
                for seq, letter in found
            ]
        )

    async def dlq_show(self, request: DlqShowRequest) -> DlqShowReply:
        return DlqShowReply(id=request.id, letter=await get_letter(self._bus, request.id))

    async def dlq_purge(self, request: DlqPurgeRequest) -> DlqPurgeReply:
        return DlqPurgeReply(purged=await purge_letters(self._bus, request.worker))

    async def dlq_replay(self, request: DlqReplayRequest) -> DlqReplayReply:
        if request.id is not None:
            await replay_letter(self._bus, request.id)
            return DlqReplayReply(replayed=1, ids=[request.id])
        assert request.worker is not None  # the request checks its own form
        done = await replay_worker(self._bus, request.worker)
        return DlqReplayReply(
            replayed=len(done.ids),
            ids=done.ids,
            skipped=[DlqReplaySkipped(id=seq, reason=why) for seq, why in done.skipped],
            left=done.left,
        )

    async def _plan(self, request: ApplyRequest) -> ApplyReply:
        """What :meth:`apply` would do with ``request``, refused as apply would; writes nothing."""
        names = [i.name for i in request.instances]
        if request.domains is not None:
            problems = domain_problems(request.domains, names)
            if problems:
                raise DomainError(problems)
            if self._router is None:
                raise UnavailableError("this process has no router: domains cannot be applied")
        instances = await self._inventory.plan(request.instances)

        def named(action: Action) -> list[str]:
            return [i.name for i in instances if i.action is action]

        result = ApplyResult(
            created=named(Action.CREATE),
            updated=named(Action.UPDATE),
            removed=named(Action.REMOVE),
            unchanged=named(Action.UNCHANGED),
        )
        if request.domains is None:
            return ApplyReply(result=result, plan=ApplyPlan(instances=instances))
        domains = plan_domains(await self._store.domains.all(), request.domains)

        def hostnames(action: Action) -> list[str]:
            return [d.hostname for d in domains if d.action is action]

        synced = DomainSync(
            created=hostnames(Action.CREATE),
            updated=hostnames(Action.UPDATE),
            removed=hostnames(Action.REMOVE),
            unchanged=hostnames(Action.UNCHANGED),
        )
        return ApplyReply(
            result=result, domains=synced, plan=ApplyPlan(instances=instances, domains=domains)
        )

    async def describe(self, request: DescribeRequest) -> DescribeReply:
        # Imported here: the describe module uses this one's check_view.
        from ctrlplane.api.describe import describe_instance

        node = None if self._nodes is None else self._nodes.name
        return await describe_instance(self._bus, self._store, request, node=node)
