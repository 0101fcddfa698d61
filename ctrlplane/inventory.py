"""Declared instances and how they are brought about: create, update, start, stop, remove.

``[[instances]]`` in the config file and ``ctrlplane apply -f FILE`` both
declare the whole set; :meth:`Inventory.apply` makes the store and the
providers match it, and is idempotent. Starting an instance on a spec not
yet deployed is recorded as a deployment (see :mod:`ctrlplane.rollout`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from msgspec import Struct, field

from ctrlplane.bus.messages import Event
from ctrlplane.cluster.placement import Placement, choose, load
from ctrlplane.cluster.types import NodeView
from ctrlplane.declarations import InstanceDecl, decl_problems
from ctrlplane.errors import CtrlplaneError
from ctrlplane.lifecycle import check_transition
from ctrlplane.plan import InstancePlan, plan_instances
from ctrlplane.providers.process import executable_problem
from ctrlplane.providers.registry import host_bound
from ctrlplane.rollout import Rollout
from ctrlplane.store.deployments import Deployment
from ctrlplane.store.instances import (
    DesiredState,
    Instance,
    InstanceState,
    new_instance_id,
)
from ctrlplane.types import Provider

if TYPE_CHECKING:
    from ctrlplane.store.db import Store

log = structlog.get_logger("ctrlplane.inventory")

Publish = Callable[[Event], Awaitable[int]]


class ApplyResult(Struct, frozen=True, kw_only=True):
    """What :meth:`Inventory.apply` changed, by instance name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Remote(Protocol):
    """Starts and stops instances on the node they are placed on
    (:class:`ctrlplane.cluster.remote.RemoteLifecycle` asks it over NATS)."""

    async def start(self, instance: Instance, *, event: str, data: dict[str, Any]) -> Instance:
        """Have ``instance``'s node start it; the instance as recorded once running."""
        ...

    async def stop(self, instance: Instance) -> Instance:
        """Have ``instance``'s node stop it; the instance as recorded once stopped."""
        ...

    async def release(self, instance: Instance) -> None:
        """Have ``instance``'s node stop its process, for a removal."""
        ...


class InventoryError(CtrlplaneError):
    """An instance could not be started, stopped or removed."""

    def __init__(self, instance: str, reason: str) -> None:
        self.instance = instance
        self.reason = reason
        super().__init__(f"instance {instance!r}: {reason}")


class Inventory:
    """Brings instances about through their providers, recording every step.

    Args:
        store: The open store.
        providers: Providers by name.
        publish: How to publish lifecycle events.
        source: The ``source`` of those events.
        stop_grace: How long an instance gets to stop before it is killed.
        process_executables: The allow-list of the ``process`` provider's
            executables; an apply that declares anything else is refused
            whole. Empty allows any.
        nodes: The cluster's live nodes as this process sees them. With it,
            a new instance of a host-bound provider is placed on a node (its
            declared ``node``, or the live node with the fewest instances),
            and this process starts and stops only host-bound instances
            placed on its own node: a process handle means something only on
            the host that started it. Without it (a control plane on its
            own) nothing is placed and every instance is this process's.
        remote: How to have another node start or stop an instance placed
            on it; without it such a change is refused (and a new instance
            placed there is left for that node's reconciler to start).
    """

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        publish: Publish,
        *,
        source: str = "inventory",
        stop_grace: timedelta = timedelta(seconds=10),
        process_executables: Sequence[str] = (),
        nodes: NodeView | None = None,
        remote: Remote | None = None,
    ) -> None:
        self._executables = tuple(process_executables)
        self._nodes = nodes
        self._remote = remote
        self._store = store
        self.providers = providers
        self._publish = publish
        self._source = source
        self._stop_grace = stop_grace
        self._locks: dict[str, asyncio.Lock] = {}
        self._rollout = Rollout(self, store, stop_grace=stop_grace)

    def lock(self, instance_id: str) -> asyncio.Lock:
        """Serialises lifecycle changes of one instance within this process."""
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def provider(self, instance: Instance) -> Provider:
        try:
            return self.providers[instance.provider]
        except KeyError:
            known = ", ".join(sorted(self.providers))
            raise InventoryError(
                instance.name, f"unknown provider {instance.provider!r}; known: {known}"
            ) from None

    def runs_here(self, instance: Instance) -> bool:
        """Whether this process starts and stops ``instance`` through its own provider.

        Not when it is host-bound and placed on another node: only that node
        runs it (asked through ``remote``). An unplaced one (recorded before
        placement existed) is any node's until the reconciler places it.
        """
        if self._nodes is None or instance.node is None:
            return True
        return instance.node == self._nodes.name or not self.is_host_bound(instance.provider)

    def is_host_bound(self, provider: str) -> bool:
        """Whether the provider named ``provider`` is host-bound (unknown ones are not)."""
        return host_bound(self.providers.get(provider)) is not None

    def _ensure_here(self, instance: Instance, action: str) -> None:
        """Refuse to act on another node's instance.

        Raises:
            InventoryError: ``instance`` is placed on another node.
        """
        if not self.runs_here(instance):
            raise InventoryError(
                instance.name,
                f"cannot {action} it here: it is placed on node {instance.node!r}, "
                "which alone starts and stops it",
            )

    async def emit(self, type_: str, instance: Instance, **data: Any) -> None:
        await self._publish(
            Event(
                type=type_,
                source=self._source,
                subject=instance.name,
                instance_id=instance.id,
                # A field with no value is left out, never null (README, Events).
                data={"name": instance.name, **{k: v for k, v in data.items() if v is not None}},
            )
        )

    async def apply(self, decls: list[InstanceDecl]) -> ApplyResult:
        """Make the recorded instances exactly ``decls``: create, update, start,
        stop and remove as needed. Running it twice changes nothing the second time.

        Starting an instance on a spec not yet deployed (a new instance, a
        changed spec) records a deployment; a changed spec of an instance
        that should run is rolled out (stop, start with the new spec, back to
        the previous spec if the new one does not start). An instance with a
        deployment in progress is left alone and named in ``errors``.
        """
        recorded = await self._store.instances.all()
        existing = {i.name: i for i in recorded}
        self.refuse(decls, existing)
        result = ApplyResult()
        counts = load(
            [
                Placement(
                    id=i.id,
                    node=i.node,
                    host_bound=self.is_host_bound(i.provider),
                    running=i.desired is DesiredState.RUNNING,
                )
                for i in recorded
            ],
            [] if self._nodes is None else self._nodes.live(),
        )
        for d in decls:
            current = existing.pop(d.name, None)
            try:
                deployment: Deployment | None = None
                if current is None:
                    changed = await self._create(d, self._place(d, counts))
                    (result.created if changed else result.unchanged).append(d.name)
                    running = changed is not None and changed.desired is DesiredState.RUNNING
                    if (
                        changed is not None
                        and running
                        and self._remote is None
                        and not self.runs_here(changed)
                    ):
                        # Its node starts it (its reconciler): a process
                        # started here would run on the wrong host.
                        log.info("instance placed", instance=d.name, node=changed.node)
                        continue
                    if changed is not None and running:
                        deployment = await self._rollout.first(changed)
                else:
                    changed, deployment = await self._update(current, d)
                    (result.updated if changed else result.unchanged).append(d.name)
                if changed is not None and deployment is not None:
                    await self._rollout.run(changed, deployment, previous=current)
                elif changed is not None:
                    await self.converge(changed)
            except CtrlplaneError as exc:
                result.errors.append(str(exc))
        for gone in existing.values():
            try:
                await self.destroy(gone)
                result.removed.append(gone.name)
            except CtrlplaneError as exc:
                result.errors.append(str(exc))
        return result

    def refuse(self, decls: list[InstanceDecl], existing: Collection[str]) -> None:
        """Refuse ``decls`` whole, before anything is applied, if apply cannot
        honour them; ``existing`` are the recorded instances' names.

        Raises:
            InventoryError: a declaration is invalid, names an unknown
                provider, a command the allow-list refuses, or a node that
                cannot be honoured for a new instance.
        """
        problems = decl_problems(decls)
        if problems:
            raise InventoryError("*", "; ".join(f"{f}: {r}" for f, r in problems))
        for d in decls:
            if d.provider not in self.providers:
                raise InventoryError(d.name, f"unknown provider {d.provider!r}")
            # Before anything is applied: a refused command is never run.
            refused = (
                executable_problem(d.command, self._executables)
                if d.provider == "process"
                else None
            )
            if refused is not None:
                raise InventoryError(d.name, refused)
        for d in decls:
            if d.name not in existing:
                self._check_node(d)

    async def plan(self, decls: list[InstanceDecl]) -> list[InstancePlan]:
        """What :meth:`apply` would do with ``decls``, changing nothing: the
        same refusals, then each instance's action and changed fields."""
        recorded = await self._store.instances.all()
        self.refuse(decls, {i.name for i in recorded})
        checks = [
            (i, [s.spec for s in await self._store.health.states(i.id, with_last=False)])
            for i in recorded
        ]
        return plan_instances(checks, decls)

    def _check_node(self, d: InstanceDecl) -> None:
        """Refuse the declared node of a new instance if it cannot be honoured,
        before anything is applied. (An existing instance is never moved by
        apply, so its declared node is not checked: after a failover it may
        name the dead node.)

        Raises:
            InventoryError: ``node`` is declared for a provider that is not
                host-bound, or names a node that is not live.
        """
        if d.node is None or self._nodes is None:
            return
        if not self.is_host_bound(d.provider):
            raise InventoryError(
                d.name,
                f"node: the provider {d.provider!r} is not host-bound, so it is not placed",
            )
        live = self._nodes.live()
        if d.node not in live:
            raise InventoryError(
                d.name, f"node: {d.node!r} is not a live node (live: {', '.join(live) or 'none'})"
            )

    def _place(self, d: InstanceDecl, counts: Counter[str]) -> str | None:
        """The node for a new instance: declared, else the one with the fewest
        instances (and counted, so that one apply spreads what it creates)."""
        if self._nodes is None or not self.is_host_bound(d.provider):
            return None
        node = d.node or (choose(counts) if counts else self._nodes.name)
        counts[node] += 1
        return node

    async def _create(self, d: InstanceDecl, node: str | None) -> Instance | None:
        """Record a new instance on ``node``; None if another process created it first."""
        now = datetime.now(UTC)
        spec = d.spec()
        instance = Instance(
            id=new_instance_id(),
            name=d.name,
            provider=d.provider,
            spec=spec,
            spec_hash=spec.digest(),
            desired=d.desired_state,
            state=InstanceState.PROVISIONING,
            node=node,
            created=now,
            updated=now,
        )
        if not await self._store.instances.create(instance):
            return None
        await self._store.health.set_checks(instance.id, d.checks)
        await self.emit("instance.created", instance, desired=d.desired_state.value)
        return instance

    async def _update(
        self, current: Instance, d: InstanceDecl
    ) -> tuple[Instance | None, Deployment | None]:
        """Record what changed (None if nothing did), and the deployment to roll out.

        Raises:
            DeploymentInProgressError: a deployment of the instance is in
                progress; nothing was changed.
        """
        spec = d.spec()
        checks_before = {
            s.name: s.spec for s in await self._store.health.states(current.id, with_last=False)
        }
        checks_after = {c.name: c for c in d.checks}
        changed = (
            current.provider != d.provider
            or current.spec_hash != spec.digest()
            or current.desired != d.desired_state
        )
        if not changed and checks_before == checks_after:
            return None, None
        if changed and self._remote is None:
            # Refused before anything is written: another node's process.
            self._ensure_here(current, "change")
        # Before anything is written: refused while a deployment is in progress.
        deployment = await self._rollout.claim(current, spec.digest(), d.desired_state)
        try:
            if changed:
                updated = Instance(
                    id=current.id,
                    name=current.name,
                    provider=d.provider,
                    spec=spec,
                    spec_hash=spec.digest(),
                    desired=d.desired_state,
                    state=current.state,
                    handle=current.handle,
                    state_error=current.state_error,
                    node=current.node,
                    created=current.created,
                    updated=datetime.now(UTC),
                )
                await self._store.instances.put(updated)
                # An operator's change: a crash loop of what it was does not count against it.
                await self._store.instances.clear_restarts(current.id)
            if checks_before != checks_after:
                await self._store.health.set_checks(current.id, d.checks)
            instance = await self._store.instances.get(current.id)
            await self.emit(
                "instance.updated",
                instance,
                desired=instance.desired.value,
                spec_changed=current.spec_hash != instance.spec_hash,
            )
        except Exception as exc:
            if deployment is not None:
                await self._rollout.abort(deployment, exc)
            raise
        return instance, deployment

    async def first_start(self, instance: Instance) -> Instance:
        """Start a new instance that another node's ``apply`` placed here, recording
        its first deployment as that ``apply`` would have.

        Raises:
            DeploymentError: it did not start (recorded ``failed``).
        """
        deployment = await self._rollout.first(instance)
        return await self._rollout.run(instance, deployment, previous=None)

    async def converge(self, instance: Instance) -> Instance:
        """Start or stop ``instance`` so that its recorded state matches its desired one."""
        wants_running = instance.desired is DesiredState.RUNNING
        if wants_running and instance.state is not InstanceState.RUNNING:
            return await self.start(instance)
        if not wants_running and instance.state in (InstanceState.RUNNING, InstanceState.STARTING):
            return await self.stop(instance)
        if not wants_running and instance.state is InstanceState.PROVISIONING:
            await self._store.instances.set_state(instance.id, InstanceState.STOPPED)
            return await self._store.instances.get(instance.id)
        return instance

    async def _begin(self, instance: Instance, target: InstanceState) -> None:
        """Move into ``target`` if the recorded state is still the one we read.

        Raises:
            IllegalTransitionError: the lifecycle does not allow it.
            InventoryError: another process changed the instance meanwhile.
        """
        check_transition(instance.name, instance.state, target)
        if not await self._store.instances.set_state(instance.id, target, expect=instance.state):
            raise InventoryError(
                instance.name, f"changed by another process while going to {target.value!r}"
            )

    async def _current(self, instance: Instance) -> Instance:
        """``instance`` as recorded now.

        Raises:
            InventoryError: it is no longer recorded (removed meanwhile).
        """
        current = await self._store.instances.find(instance.id)
        if current is None:
            raise InventoryError(instance.name, "removed by another process")
        return current

    async def _failed(self, instance: Instance, exc: Exception) -> str:
        """Record that a provider call failed; returns the reason."""
        reason = str(exc) or type(exc).__name__
        await self._store.instances.set_state(instance.id, InstanceState.FAILED, error=reason)
        return reason

    async def start(
        self, instance: Instance, *, event: str = "instance.started", **data: Any
    ) -> Instance:
        """Start ``instance`` through its provider; records ``starting`` then ``running``
        (or ``failed`` with the reason) and publishes ``event`` or ``instance.failed``."""
        provider = self.provider(instance)
        if not self.runs_here(instance) and self._remote is not None:
            return await self._remote.start(instance, event=event, data=data)
        self._ensure_here(instance, "start")
        async with self.lock(instance.id):
            await self._begin(instance, InstanceState.STARTING)
            try:
                handle = await provider.start(instance)
            except Exception as exc:
                reason = await self._failed(instance, exc)
                failed = await self._store.instances.get(instance.id)
                await self.emit("instance.failed", failed, reason=reason)
                raise InventoryError(instance.name, f"start failed: {reason}") from exc
            await self._store.instances.set_state(instance.id, InstanceState.RUNNING, handle=handle)
            started = await self._store.instances.get(instance.id)
        log.info("instance started", instance=instance.name, handle=handle)
        await self.emit(event, started, handle=handle, **data)
        return started

    async def stop(self, instance: Instance) -> Instance:
        """Stop ``instance``; records ``stopping`` then ``stopped``."""
        provider = self.provider(instance)
        if not self.runs_here(instance) and self._remote is not None:
            return await self._remote.stop(instance)
        self._ensure_here(instance, "stop")
        async with self.lock(instance.id):
            await self._begin(instance, InstanceState.STOPPING)
            await self._provider_stop(provider, instance, "stop")
            await self._store.instances.set_state(instance.id, InstanceState.STOPPED)
            stopped = await self._store.instances.get(instance.id)
        await self.emit("instance.stopped", stopped)
        return stopped

    async def release(self, instance: Instance) -> None:
        """Stop the process of ``instance``, which another node is removing.

        Raises:
            InventoryError: it is not this node's, or its provider failed.
        """
        provider = self.provider(instance)
        self._ensure_here(instance, "remove")
        async with self.lock(instance.id):
            await self._provider_stop(provider, instance, "remove")

    def _on_dead_node(self, instance: Instance) -> bool:
        """Whether ``instance`` is another node's, and that node is not live."""
        return (
            self._nodes is not None
            and not self.runs_here(instance)
            and instance.node not in self._nodes.live()
        )

    async def _provider_stop(self, provider: Provider, instance: Instance, action: str) -> None:
        try:
            await provider.stop(instance, self._stop_grace)
        except Exception as exc:
            reason = await self._failed(instance, exc)
            raise InventoryError(instance.name, f"{action} failed: {reason}") from exc

    async def destroy(self, instance: Instance) -> None:
        """Stop ``instance`` if it runs, then forget it, whatever state it was in.

        The record is read again once the instance's lock is held: a worker
        (the remediator, the reconciler) may have changed its state since
        ``instance`` was read, which must not make the removal fail.
        """
        provider = self.provider(instance)
        async with self.lock(instance.id):
            instance = await self._current(instance)
            here = self.runs_here(instance)
            dead = not here and self._on_dead_node(instance)
            if not here and not dead and self._remote is None:
                self._ensure_here(instance, "remove")
            await self._begin(instance, InstanceState.DESTROYING)
            if dead:
                # Its host is gone or cut off: nothing here can stop its
                # process, and waiting for the node would keep it forever.
                log.warning("removed from a dead node", instance=instance.name, node=instance.node)
            elif not here and self._remote is not None:
                await self._remote.release(await self._current(instance))
            else:
                await self._provider_stop(provider, instance, "remove")
            await self._store.instances.delete(instance.id)
        self._locks.pop(instance.id, None)
        await self.emit("instance.destroyed", instance)
