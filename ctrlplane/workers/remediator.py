"""Remediator: brings back instances that should run, with crash-loop back-off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.actors.errors import Retry
from ctrlplane.config import RemediationConfig
from ctrlplane.inventory import Inventory, InventoryError
from ctrlplane.store.db import Store
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import DesiredState, Instance, InstanceState

GAVE_UP = "gave up: "


class Remediator:
    """Restarts an instance whose desired state is ``running`` when it drifted
    away from running or one of its checks failed.

    Restarts back off exponentially (``backoff``, doubling, at most
    ``max_backoff``) and at most ``max_restarts`` happen within ``window``;
    past that it gives up, marks the instance ``failed`` and publishes
    ``instance.failed``. Restarts are counted in the store, so the back-off
    holds across processes and restarts of the control plane. A restart that
    must wait is handed back to NATS with that delay, not slept on.

    A restart that cannot even start the instance (its binary is gone, say)
    counts as one of those restarts and is tried again after the back-off:
    the inventory has recorded the instance ``failed``, which the reconciler
    does not call drift, so nothing else would. Once given up on, an
    instance stays ``failed`` and is left alone until an ``apply`` changes
    it (its spec, or its desired state), which starts the count afresh, or
    removes it.

    In a cluster it may handle an event about another node's host-bound
    instance: the inventory has that node restart it.
    """

    name = "remediator"
    interval = timedelta(0)
    subscriptions = ("instance.drift", "health.failed")
    # Back-off is done by redelivery with a delay, which counts as an attempt.
    max_attempts = 1000
    timeout = timedelta(minutes=2)
    # A restart takes seconds: leave the backlog to other processes too.
    prefetch = 8

    def __init__(
        self, store: Store, inventory: Inventory, config: RemediationConfig | None = None
    ) -> None:
        self._store = store
        self._inventory = inventory
        self._config = config or RemediationConfig()

    async def run(self, ctx: RunContext) -> None:
        event = ctx.event
        if event is None or event.instance_id is None:
            return
        instance = await self._store.instances.find(event.instance_id)
        if instance is None or instance.desired is not DesiredState.RUNNING:
            return
        if not await self._needs_restart(instance, event.type, event.data, event.time):
            return
        now = datetime.now(UTC)
        cfg = self._config
        recent = await self._store.instances.restarts_since(instance.id, now - cfg.window)
        if len(recent) >= cfg.max_restarts:
            await self._give_up(ctx, instance, len(recent))
            return
        if recent:
            due = recent[-1] + self._delay(len(recent))
            if due > now:
                raise Retry(due - now, reason=f"crash-loop back-off for {instance.name!r}")
        await self._restart(ctx, instance, now, len(recent) + 1)

    def _delay(self, restarts: int) -> timedelta:
        """The wait after the ``restarts``-th restart within the window."""
        cfg = self._config
        return min(cfg.max_backoff, cfg.backoff * (1 << (restarts - 1)))

    async def _needs_restart(
        self, instance: Instance, event_type: str, data: dict[str, object], when: datetime
    ) -> bool:
        if event_type == "instance.drift":
            # Already back (another trigger was first), or being changed now.
            return instance.state in (InstanceState.STOPPED, InstanceState.FAILED) and not (
                instance.state_error or ""
            ).startswith(GAVE_UP)
        # health.failed: only if that check is still failing and nobody
        # restarted the instance since the failure was seen.
        if instance.state is not InstanceState.RUNNING or instance.updated > when:
            return False
        check = data.get("check")
        states = await self._store.health.states(instance.id, with_last=False)
        return any(s.name == check and s.status is HealthStatus.UNHEALTHY for s in states)

    async def _restart(
        self, ctx: RunContext, instance: Instance, now: datetime, attempt: int
    ) -> None:
        await self._store.instances.record_restart(instance.id, now)
        ctx.log.warning("restarting instance", instance=instance.name, attempt=attempt)
        try:
            if instance.state is InstanceState.RUNNING:
                instance = await self._inventory.stop(instance)
            await self._inventory.start(instance, event="instance.restarted", attempt=attempt)
        except InventoryError as exc:
            # Recorded (and told) by the inventory. The instance's fault, not
            # ours: try again after the back-off, or give up then.
            ctx.log.warning(
                "restart failed", instance=instance.name, attempt=attempt, reason=exc.reason
            )
            raise Retry(
                self._delay(attempt),
                reason=f"restart {attempt} of {instance.name!r} failed: {exc.reason}",
            ) from exc

    async def _give_up(self, ctx: RunContext, instance: Instance, restarts: int) -> None:
        if (instance.state_error or "").startswith(GAVE_UP):
            return
        window = self._config.window
        reason = f"{GAVE_UP}{restarts} restarts within {window.total_seconds():g}s"
        if instance.state is InstanceState.RUNNING:
            instance = await self._inventory.stop(instance)
        # Only if nobody changed it meanwhile (an apply starting a new spec).
        if not await self._store.instances.set_state(
            instance.id, InstanceState.FAILED, error=reason, expect=instance.state
        ):
            return
        failed = await self._store.instances.get(instance.id)
        ctx.log.error("instance keeps failing; giving up", instance=instance.name, reason=reason)
        await self._inventory.emit("instance.failed", failed, reason=reason)
