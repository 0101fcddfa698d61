"""Deployments: rolling an instance onto a new spec through its provider, or back.

A deployment is recorded each time ``apply`` starts an instance on a spec that
has not yet been deployed successfully: a new instance's first start
(``previous_hash`` null), a changed spec of an instance that should run
(stop, start with the new spec), and the start of a stopped instance whose
spec changed while it was stopped. If the new spec does not start and the
instance was running the previous one, the previous spec is recorded again
and started (``rolled_back``); if that fails too, or there was nothing to go
back to, the deployment is ``failed``.

One deployment of an instance at a time: while one is in progress (in any
process sharing the store), ``apply`` refuses to change that instance and
says which deployment holds it; nothing is cancelled or queued. A deployment
left in progress by a process that died is marked ``cancelled`` by the next
``apply`` of that instance once it is older than ``ABANDONED_AFTER`` (plus
the stop grace).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from ctrlplane.errors import CtrlplaneError
from ctrlplane.events import DeployChange, data_of
from ctrlplane.store.deployments import (
    IN_PROGRESS,
    Deployment,
    DeploymentState,
    new_deployment_id,
)
from ctrlplane.store.instances import DesiredState, Instance, InstanceState

if TYPE_CHECKING:
    from ctrlplane.store.db import Store

log = structlog.get_logger("ctrlplane.rollout")

ABANDONED_AFTER = timedelta(minutes=5)
"""A deployment in progress for longer than this (plus the stop grace) was
left behind by a process that went away: a rollout takes one stop and at most
two starts."""


class DeploymentInProgressError(CtrlplaneError):
    """``apply`` would change an instance while a deployment of it is in progress."""

    def __init__(self, instance: str, deployment: Deployment) -> None:
        self.instance = instance
        self.deployment = deployment
        super().__init__(
            f"instance {instance!r}: deployment {deployment.id} (spec {deployment.spec_hash}) "
            f"is in progress since {deployment.started.isoformat(timespec='seconds')}; "
            "apply again once it has finished"
        )


class DeploymentError(CtrlplaneError):
    """A deployment did not succeed; ``deployment.state`` says whether it was rolled back."""

    def __init__(self, instance: str, deployment: Deployment) -> None:
        self.instance = instance
        self.deployment = deployment
        outcome = (
            f"; rolled back to spec {deployment.previous_hash}, which runs again"
            if deployment.state is DeploymentState.ROLLED_BACK
            else ""
        )
        super().__init__(
            f"instance {instance!r}: deployment {deployment.id} of spec {deployment.spec_hash} "
            f"failed: {deployment.error}{outcome}"
        )


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else str(exc) or type(exc).__name__


class Instances(Protocol):
    """What a rollout needs of the instances it rolls (the Inventory implements it).

    Defined here, not taken from :mod:`ctrlplane.inventory`, so that the
    dependency points one way: the inventory uses a rollout, never the reverse.
    """

    async def start(self, instance: Instance) -> Instance:
        """Start ``instance`` and return it as recorded once running; raise if it fails."""
        ...

    async def stop(self, instance: Instance) -> Instance:
        """Stop ``instance`` and return it as recorded once stopped."""
        ...

    async def emit(self, type_: str, instance: Instance, **data: Any) -> None:
        """Publish the event ``type_`` about ``instance``."""
        ...


class Rollout:
    """Records deployments and rolls instances onto their specs for an inventory."""

    def __init__(self, inventory: Instances, store: Store, *, stop_grace: timedelta) -> None:
        self._inventory = inventory
        self._store = store
        self._abandoned_after = ABANDONED_AFTER + stop_grace

    async def first(self, instance: Instance) -> Deployment:
        """Record the deployment of a new instance's first start."""
        deployment = self._new(instance, instance.spec_hash, None)
        await self._store.deployments.create(deployment)
        return deployment

    async def claim(
        self, current: Instance, spec_hash: str, desired: DesiredState
    ) -> Deployment | None:
        """Call before ``current`` is changed to ``spec_hash`` and ``desired``.

        Returns:
            The deployment recorded (``pending``) when the change is to be
            deployed, else ``None``.

        Raises:
            DeploymentInProgressError: a deployment of the instance is in
                progress; nothing was recorded.
        """
        previous: str | None = None
        deploy = False
        if desired is DesiredState.RUNNING:
            if spec_hash != current.spec_hash:
                deploy, previous = True, current.spec_hash
            elif current.state is not InstanceState.RUNNING:
                # About to be started: a deployment if this spec never succeeded.
                done = await self._store.deployments.list(
                    instance_id=current.id, state=DeploymentState.SUCCEEDED, limit=1
                )
                last = done[0].spec_hash if done else None
                deploy, previous = last != spec_hash, last
        abandoned_before = datetime.now(UTC) - self._abandoned_after
        if not deploy:
            busy = await self._store.deployments.busy(current.id, abandoned_before=abandoned_before)
            if busy is not None:
                raise DeploymentInProgressError(current.name, busy)
            return None
        deployment = self._new(current, spec_hash, previous)
        busy = await self._store.deployments.claim(deployment, abandoned_before=abandoned_before)
        if busy is not None:
            raise DeploymentInProgressError(current.name, busy)
        return deployment

    def _new(self, instance: Instance, spec_hash: str, previous: str | None) -> Deployment:
        return Deployment(
            id=new_deployment_id(),
            instance_id=instance.id,
            instance_name=instance.name,
            spec_hash=spec_hash,
            previous_hash=previous,
            state=DeploymentState.PENDING,
            started=datetime.now(UTC),
        )

    async def run(
        self, instance: Instance, deployment: Deployment, *, previous: Instance | None
    ) -> Instance:
        """Roll ``instance`` (as recorded now, with the new spec) onto its spec.

        Args:
            instance: The instance with its new spec recorded.
            deployment: The pending deployment from :meth:`claim` or :meth:`first`.
            previous: The instance as it was before the change; if it was
                running another spec, that spec is what a failure rolls back to.

        Returns:
            The instance, running its new spec.

        Raises:
            DeploymentError: the new spec did not start (rolled back or failed).
        """
        try:
            return await self._run(instance, deployment, previous)
        except DeploymentError:
            raise
        except Exception as exc:
            await self.abort(deployment, exc)
            raise

    async def abort(self, deployment: Deployment, exc: Exception) -> None:
        """Mark ``deployment`` failed if ``exc`` interrupted it while still in
        progress (the store or the bus failed), so it does not hold its
        instance until it counts as abandoned."""
        with contextlib.suppress(Exception):
            now = await self._store.deployments.get(deployment.id)
            if now.state in IN_PROGRESS:
                await self._store.deployments.update(
                    deployment.id, DeploymentState.FAILED, error=f"interrupted: {_reason(exc)}"
                )

    async def _run(
        self, instance: Instance, deployment: Deployment, previous: Instance | None
    ) -> Instance:
        inv = self._inventory
        deployment = await self._store.deployments.update(deployment.id, DeploymentState.RUNNING)
        await self._emit("deploy.started", instance, deployment)
        rollback_to = (
            previous
            if previous is not None
            and previous.state is InstanceState.RUNNING
            and previous.spec_hash != instance.spec_hash
            else None
        )
        try:
            if instance.state in (InstanceState.RUNNING, InstanceState.STARTING):
                # A failed stop leaves the old process in doubt: no roll back then.
                try:
                    instance = await inv.stop(instance)
                except CtrlplaneError:
                    rollback_to = None
                    raise
            started = await inv.start(instance)
        except Exception as exc:
            raise await self._failure(instance, deployment, _reason(exc), rollback_to) from exc
        deployment = await self._store.deployments.update(deployment.id, DeploymentState.SUCCEEDED)
        await self._emit("deploy.succeeded", started, deployment)
        log.info("deployed", instance=instance.name, spec=deployment.spec_hash)
        return started

    async def _failure(
        self,
        instance: Instance,
        deployment: Deployment,
        error: str,
        rollback_to: Instance | None,
    ) -> DeploymentError:
        """Roll back if there is something to go back to; record and tell the outcome."""
        state = DeploymentState.FAILED
        if rollback_to is not None:
            try:
                await self._roll_back(instance, rollback_to)
                state = DeploymentState.ROLLED_BACK
            except Exception as exc:
                error = f"{error}; rolling back to {rollback_to.spec_hash} failed: {_reason(exc)}"
        deployment = await self._store.deployments.update(deployment.id, state, error=error)
        current = await self._store.instances.get(instance.id)
        await self._emit(
            "deploy.failed",
            current,
            deployment,
            rolled_back=state is DeploymentState.ROLLED_BACK,
        )
        log.warning(
            "deployment failed", instance=instance.name, state=state.value, error=deployment.error
        )
        return DeploymentError(instance.name, deployment)

    async def _roll_back(self, instance: Instance, to: Instance) -> None:
        """Record the previous spec again and start the instance on it."""
        failed = await self._store.instances.get(instance.id)
        reverted = msgspec.structs.replace(
            failed, spec=to.spec, spec_hash=to.spec_hash, updated=datetime.now(UTC)
        )
        await self._store.instances.put(reverted)
        await self._inventory.start(reverted)

    async def _emit(
        self,
        type_: str,
        instance: Instance,
        deployment: Deployment,
        *,
        rolled_back: bool | None = None,
    ) -> None:
        change = DeployChange(
            name=instance.name,
            deployment=deployment.id,
            spec_hash=deployment.spec_hash,
            previous_hash=deployment.previous_hash,
            state=deployment.state,
            error=deployment.error,
            rolled_back=rolled_back,
        )
        await self._inventory.emit(type_, instance, **data_of(change))
