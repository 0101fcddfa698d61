"""Reconciler: finds drift between recorded state and what providers report."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.bus.messages import Event
from ctrlplane.errors import PartialFailure
from ctrlplane.events import InstanceDrift, data_of
from ctrlplane.lifecycle import SETTLED
from ctrlplane.store.db import Store
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Observation, Provider

DEFAULT_INTERVAL = timedelta(seconds=60)
# A transition (starting, stopping, ...) that has not settled after this long
# was abandoned by a process that died: reconcile it like a settled state.
STUCK_AFTER = timedelta(minutes=2)


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
    """

    name = "reconciler"
    subscriptions = ("instance.*",)

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        provider_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self.interval = interval
        self.timeout = max(interval, provider_timeout * 2)
        self._store = store
        self._providers = providers
        self._provider_timeout = provider_timeout

    async def run(self, ctx: RunContext) -> None:
        event = ctx.event
        if event is not None and event.type in _NOTHING_TO_COMPARE:
            return
        instances = await self._store.instances.all()
        if event is not None:
            instances = [i for i in instances if i.id == event.instance_id]
        drifts, failures = await self.reconcile(instances)
        for drift in drifts:
            await ctx.publish(drift)
            ctx.log.warning("drift", instance=drift.data["name"], actual=drift.data["actual"])
        if failures:
            raise ReconcileError(failures)

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
            instance_id=instance.id,
            data=data_of(
                InstanceDrift(
                    name=instance.name,
                    recorded=recorded.value,
                    actual=actual.value,
                    detected_at=now,
                    detail=seen.detail,
                )
            ),
        )
