"""Reconciler: finds drift between recorded state and what providers report.

In a cluster it is node-scoped: each node reconciles the host-bound instances
placed on it, places those of dead nodes (failover), and stops its own copies
of instances that were moved away while it was silent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.bus.messages import Event
from ctrlplane.cluster.placement import Move, Placement, plan
from ctrlplane.cluster.shards import owner
from ctrlplane.cluster.types import NodeView
from ctrlplane.errors import CtrlplaneError, PartialFailure
from ctrlplane.events import InstanceDrift, InstanceRescheduled, data_of
from ctrlplane.inventory import Inventory
from ctrlplane.lifecycle import SETTLED
from ctrlplane.providers.registry import host_bound
from ctrlplane.store.db import Store
from ctrlplane.store.instances import DesiredState, Instance, InstanceState
from ctrlplane.types import HostBoundProvider, Observation, Provider

DEFAULT_INTERVAL = timedelta(seconds=60)
# A transition (starting, stopping, ...) that has not settled after this long
# was abandoned by a process that died: reconcile it like a settled state.
STUCK_AFTER = timedelta(minutes=2)
HANDOFF_GRACE = timedelta(seconds=5)
"""A new instance that another node's ``apply`` placed here and left
``provisioning`` for this long is started by this node's reconciler. (The
grace keeps it from racing this node's own ``apply``, which starts what it
places here at once.)"""


# Our own finding, and an instance that is no more: nothing new to compare.
_NOTHING_TO_COMPARE = frozenset({"instance.drift", "instance.destroyed"})


class ReconcileError(PartialFailure):
    """Some providers could not be asked; the rest were reconciled."""

    what = "reconcile incomplete"


class Reconciler:
    """Compares every instance's recorded state with its provider's report.

    On drift it records the actual state and publishes ``instance.drift``.
    It runs every ``interval`` and at once on ``instance.*`` lifecycle events
    (for the instance the event names). A provider that fails or times out
    is isolated: the others are reconciled and the run is then recorded as
    failed, naming it.

    An instance recorded ``failed`` whose process is gone (stopped or failed)
    is not drift: it stays ``failed``, with its reason, until it is started
    again. Only a running process contradicts that record.

    With ``nodes`` (a cluster), it is node-scoped and a process handle is
    only ever read on the node that made it:

    - it compares only the host-bound instances placed on its own node (and,
      as without a cluster, every instance of a provider that is not
      host-bound: those calls reach the same remote API from any node);
    - on each tick it computes the placement plan of
      :func:`ctrlplane.cluster.placement.plan` from ``nodes.live()``: the
      instances that should run on a dead node (silent for ``node_timeout``)
      and those never placed. Every node computes the same plan; each claims
      only the moves to itself, with a placement conditional on the node the
      instance was on, so one node wins each. It publishes
      ``instance.rescheduled`` (from, to) and starts the instance here;
    - it starts new instances that another node's ``apply`` placed here;
    - it stops this host's own processes of instances now placed on another
      node or removed (while this node was silent), found through the
      provider's own record (:meth:`HostBoundProvider.local_instances`), and
      re-adopts such a process when its instance is placed back here.

    Args:
        store: The open store.
        providers: Providers by name.
        interval: How often it runs (``reconcile_interval``).
        provider_timeout: How long one provider's status call may take.
        nodes: The cluster's live nodes; without it every instance is this
            process's, as on a control plane of its own.
        inventory: Starts what this node takes over; required with ``nodes``.
        stop_grace: How long a local copy of a moved instance gets to stop.
        handoff_grace: See :data:`HANDOFF_GRACE`.
    """

    name = "reconciler"
    scope = "node"
    subscriptions = ("instance.*",)

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        provider_timeout: timedelta = timedelta(seconds=10),
        nodes: NodeView | None = None,
        inventory: Inventory | None = None,
        stop_grace: timedelta = timedelta(seconds=10),
        handoff_grace: timedelta = HANDOFF_GRACE,
    ) -> None:
        if nodes is not None and inventory is None:
            raise CtrlplaneError(
                "reconciler: a node's reconciler needs the inventory, to start what it takes over"
            )
        self.interval = interval
        self.timeout = max(interval, provider_timeout * 2)
        self._store = store
        self._providers = providers
        self._provider_timeout = provider_timeout
        self._nodes = nodes
        self._inventory = inventory
        self._stop_grace = stop_grace
        self._handoff_grace = handoff_grace

    async def run(self, ctx: RunContext) -> None:
        event = ctx.event
        if event is not None and event.type in _NOTHING_TO_COMPARE:
            return
        instances = await self._store.instances.all()
        failures: dict[str, str] = {}
        if self._nodes is not None and event is None:
            # On ticks only: events come often and name one instance.
            instances = await self._place(ctx, instances, failures)
            await self._let_go(ctx, instances, failures)
        instances = [i for i in instances if self._mine(i)]
        if event is not None:
            instances = [i for i in instances if i.id == event.instance_id]
        drifts, unreachable = await self.reconcile(instances)
        failures.update(unreachable)
        for drift in drifts:
            await ctx.publish(drift)
            ctx.log.warning("drift", instance=drift.data["name"], actual=drift.data["actual"])
        if self._nodes is not None:
            await self._start_handed_over(ctx, instances, failures)
        if failures:
            raise ReconcileError(failures)

    def _host_bound(self, instance: Instance) -> HostBoundProvider | None:
        return host_bound(self._providers.get(instance.provider))

    def _mine(self, instance: Instance) -> bool:
        """Whether this node reconciles ``instance``: a host-bound one if it is
        placed here; any other on the one live node the stable hash picks, so
        each is reconciled once per slot in the cluster, not once per node."""
        if self._nodes is None:
            return True
        if self._host_bound(instance) is None:
            return owner(instance.id, self._live()) == self._nodes.name
        return instance.node == self._nodes.name

    def _live(self) -> list[str]:
        assert self._nodes is not None
        live = self._nodes.live()
        me = self._nodes.name
        # A process that runs is alive, whether or not its view lists it yet.
        return live if me in live else sorted([*live, me])

    async def _place(
        self, ctx: RunContext, instances: list[Instance], failures: dict[str, str]
    ) -> list[Instance]:
        """Claim this node's share of the placement plan; the instances as recorded after."""
        assert self._nodes is not None
        me = self._nodes.name
        facts = [
            Placement(
                id=i.id,
                node=i.node,
                host_bound=self._host_bound(i) is not None,
                running=i.desired is DesiredState.RUNNING,
            )
            for i in instances
        ]
        by_id = {i.id: i for i in instances}
        claimed = False
        for move in plan(facts, self._live()):
            if move.target != me:
                continue  # that node claims it, in its own run
            instance = by_id[move.instance_id]
            # Conditional: if another node moved it first, it is theirs.
            if not await self._store.instances.place(instance.id, me, expect=move.source):
                continue
            claimed = True
            if move.source is None:
                ctx.log.info("instance placed", instance=instance.name, node=me)
                continue
            await self._rescheduled(ctx, instance, move)
            try:
                await self._take_over(instance.id)
            except CtrlplaneError as exc:
                failures[f"take over {instance.name!r}"] = str(exc)
        return await self._store.instances.all() if claimed else instances

    async def _rescheduled(self, ctx: RunContext, instance: Instance, move: Move) -> None:
        ctx.log.warning(
            "instance rescheduled", instance=instance.name, source=move.source, target=move.target
        )
        await ctx.publish(
            Event(
                type="instance.rescheduled",
                source=self.name,
                subject=instance.name,
                instance_id=instance.id,
                data=data_of(
                    InstanceRescheduled(
                        name=instance.name, from_node=move.source, to_node=move.target
                    )
                ),
            )
        )

    async def _take_over(self, instance_id: str) -> None:
        """Run an instance just placed here, off a dead node."""
        assert self._inventory is not None
        instance = await self._store.instances.get(instance_id)
        provider = self._host_bound(instance)
        assert provider is not None  # only host-bound instances are placed
        local = (await provider.local_instances()).get(instance.id)
        if local is not None:
            # This host's own process of it, from before it was moved away: keep it.
            await self._store.instances.set_state(instance.id, InstanceState.RUNNING, handle=local)
            return
        if instance.state is InstanceState.PROVISIONING:
            if instance.desired is DesiredState.RUNNING:
                await self._inventory.first_start(instance)
            return
        # The handle recorded is the dead node's: it means nothing on this host
        # (here it might even name an unrelated process), so it is forgotten.
        if not await self._store.instances.set_state(
            instance.id, InstanceState.STOPPED, keep_handle=False, expect=instance.state
        ):
            return  # changed meanwhile: whoever changed it carries on
        if instance.desired is DesiredState.RUNNING:
            stopped = await self._store.instances.get(instance.id)
            await self._inventory.start(stopped)

    async def _let_go(
        self, ctx: RunContext, instances: list[Instance], failures: dict[str, str]
    ) -> None:
        """Stop this host's processes of instances now placed on another node, or
        removed, while this node was silent."""
        assert self._nodes is not None
        me = self._nodes.name
        by_id = {i.id: i for i in instances}
        providers = {id(p): p for p in map(host_bound, self._providers.values()) if p}
        for provider in providers.values():
            for instance_id, handle in (await provider.local_instances()).items():
                instance = by_id.get(instance_id)
                if instance is not None and instance.node in (me, None):
                    continue
                # Read again: one created (or placed here) since our read has
                # its record before its process, so it is never taken for gone.
                current = await self._store.instances.find(instance_id)
                if current is not None and current.node in (me, None):
                    continue
                ctx.log.warning(
                    "stopping a copy of an instance placed elsewhere or removed",
                    instance=instance_id if current is None else current.name,
                    node=None if current is None else current.node,
                    handle=handle,
                )
                try:
                    await provider.stop_local(instance_id, self._stop_grace)
                except Exception as exc:  # one instance's failure does not stop the others
                    failures[f"stop local copy of {instance_id}"] = f"{type(exc).__name__}: {exc}"

    async def _start_handed_over(
        self, ctx: RunContext, instances: list[Instance], failures: dict[str, str]
    ) -> None:
        """Start new instances that another node's ``apply`` placed here."""
        assert self._inventory is not None
        now = datetime.now(UTC)
        for instance in instances:
            if (
                instance.state is InstanceState.PROVISIONING
                and instance.desired is DesiredState.RUNNING
                and self._host_bound(instance) is not None
                and now - instance.updated >= self._handoff_grace
            ):
                ctx.log.info("starting an instance placed here", instance=instance.name)
                try:
                    await self._inventory.first_start(instance)
                except CtrlplaneError as exc:
                    failures[f"start {instance.name!r}"] = str(exc)

    async def reconcile(self, instances: list[Instance]) -> tuple[list[Event], dict[str, str]]:
        """Reconcile ``instances``; returns the drift events and the failed providers."""
        by_provider: dict[str, list[Instance]] = defaultdict(list)
        for instance in instances:
            if instance.state not in (InstanceState.DESTROYED, InstanceState.PROVISIONING):
                by_provider[instance.provider].append(instance)
        failures: dict[str, str] = {}
        reports = await asyncio.gather(
            *(self._ask(name, group) for name, group in by_provider.items())
        )
        drifts: list[Event] = []
        for (name, group), report in zip(by_provider.items(), reports, strict=True):
            if isinstance(report, str):
                failures[name] = report
                continue
            for instance in group:
                seen = report.get(instance.id)
                if seen is None:
                    failures[name] = f"no status reported for {instance.name!r}"
                    continue
                drift = await self._compare(instance, seen)
                if drift is not None:
                    drifts.append(drift)
        return drifts, failures

    async def _ask(self, name: str, group: list[Instance]) -> dict[str, Observation] | str:
        provider = self._providers.get(name)
        if provider is None:
            return f"unknown provider {name!r}"
        try:
            async with asyncio.timeout(self._provider_timeout.total_seconds()):
                return await provider.status(group)
        except TimeoutError:
            return f"timed out after {self._provider_timeout.total_seconds():g}s"
        except Exception as exc:  # isolate one provider's failure from the rest
            return f"{type(exc).__name__}: {exc}"

    async def _compare(self, instance: Instance, seen: Observation) -> Event | None:
        recorded = instance.state
        actual = seen.state
        if recorded == actual:
            return None
        if recorded is InstanceState.FAILED and actual is not InstanceState.RUNNING:
            # Failed, and its process is gone (how it went is not always
            # knowable): that is what "failed" means. Calling it drift would
            # overwrite the reason and hand the instance back to the
            # remediator, which gave up on it or is backing off.
            return None
        now = datetime.now(UTC)
        if recorded not in SETTLED and now - instance.updated < STUCK_AFTER:
            return None  # someone is changing it right now
        # Conditional on the state we read: if another process (or the
        # remediator) changed it meanwhile, that change wins and no drift is told.
        error = seen.detail if actual is InstanceState.FAILED else None
        if not await self._store.instances.set_state(
            instance.id, actual, error=error, expect=recorded
        ):
            return None
        return Event(
            type="instance.drift",
            source=self.name,
            subject=instance.name,
            instance_id=instance.id,
            data=data_of(
                InstanceDrift(
                    name=instance.name,
                    recorded=recorded,
                    actual=actual,
                    detected_at=now,
                    detail=seen.detail or None,
                )
            ),
        )
