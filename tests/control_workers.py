"""Workers the worker-control CLI test loads by ``module:Class`` reference."""

from __future__ import annotations

from datetime import timedelta

from ctrlplane.actors import RunContext


class Hourly:
    """Runs at start and then hourly: runs beyond the first are asked for."""

    name = "hourly"
    interval = timedelta(hours=1)

    async def run(self, ctx: RunContext) -> None:
        return None


class Listens:
    """Event-driven: there is no run to ask for."""

    name = "listens"
    interval = timedelta(0)
    subscriptions = ("control-test.ping",)

    async def run(self, ctx: RunContext) -> None:
        return None
