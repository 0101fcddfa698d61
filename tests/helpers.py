"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import aiosqlite
import msgspec
import nats
import structlog
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from ctrlplane import ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.actors.runs import Trigger
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.messages import DeadLetter, Event
from ctrlplane.bus.server import EmbeddedServer, ServerInfo
from ctrlplane.providers.process import ProcessProvider
from ctrlplane.security import ROLES, embedded_authorization
from ctrlplane.store.db import Store
from ctrlplane.store.instances import DesiredState, Instance, InstanceSpec, InstanceState
from ctrlplane.store.sqlite import SqliteDatabase
from tests import event_contract


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Wait until ``condition`` holds, or fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def make_instance(
    name: str = "web",
    command: list[str] | None = None,
    *,
    id: str | None = None,
    provider: str = "process",
    state: InstanceState = InstanceState.RUNNING,
    handle: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    metrics_url: str | None = None,
) -> Instance:
    """An instance record as the store keeps it (nothing is started)."""
    spec = InstanceSpec(
        command=["true"] if command is None else command,
        env=env or {},
        cwd=cwd,
        metrics_url=metrics_url,
    )
    now = datetime.now(UTC)
    return Instance(
        id=id or f"i-{uuid.uuid4().hex[:12]}",
        name=name,
        provider=provider,
        spec=spec,
        spec_hash=spec.digest(),
        desired=DesiredState.RUNNING,
        state=state,
        handle=handle,
        created=now,
        updated=now,
    )


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 and an ephemeral port; yields the port."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def subscribe_events(nats_server: ServerInfo, subject: str) -> tuple[Client, list[Event]]:
    """A plain nats-py client collecting events, as another service would subscribe."""
    nc = await nats.connect(nats_server.client_url)
    seen: list[Event] = []

    async def collect(msg: Msg) -> None:
        seen.append(msgspec.json.decode(msg.data, type=Event))

    await nc.subscribe(subject, cb=collect)
    return nc, seen


def health_failed(*, source: str = "test", id: str | None = None, check: str = "http") -> Event:
    """A ``health.failed`` event whose data follows its schema (HealthChange)."""
    event = Event(
        type="health.failed",
        source=source,
        subject="web",
        data={
            "name": "web",
            "check": check,
            "previous": "healthy",
            "current": "unhealthy",
            "message": "connection refused",
        },
    )
    return event if id is None else msgspec.structs.replace(event, id=id)


async def dead_letters(bus: Bus, worker: str) -> list[DeadLetter]:
    """The dead letters kept for ``worker`` so far (at most 100)."""
    sub = await bus.js.pull_subscribe(bus.subjects.dlq(worker), stream=bus.subjects.dlq_stream)
    try:
        msgs = await sub.fetch(100, timeout=1)
    except nats.errors.TimeoutError:
        return []
    finally:
        await sub.unsubscribe()
    return [msgspec.json.decode(m.data, type=DeadLetter) for m in msgs]


def tick_context(worker: str, published: list[Event]) -> RunContext:
    """A tick run's context for ``worker`` whose events land in ``published``."""

    async def publish(event: Event) -> int:
        event_contract.note(event)
        published.append(event)
        return len(published)

    return RunContext(
        worker=worker,
        run_id="r1",
        trigger=Trigger.TICK,
        attempt=1,
        publish=publish,
        log=structlog.get_logger(),
    )


class FixedNodes:
    """A NodeView whose live list the test sets: it stands for the node
    registry's view (heartbeats), so a test controls which nodes are live."""

    def __init__(self, name: str, live: list[str]) -> None:
        self._name = name
        self.alive = list(live)

    @property
    def name(self) -> str:
        return self._name

    def live(self) -> list[str]:
        return sorted(self.alive)


def sqlite_connection(store: Store) -> aiosqlite.Connection:
    """The aiosqlite connection of a SQLite store (for its statement trace)."""
    assert isinstance(store.db, SqliteDatabase), "a SQLite-only test got another backend"
    return store.db.connection


def reap_instances(planes: Sequence[ControlPlane]) -> None:
    """Kill what the control planes' process providers started, and reap it:
    no zombie, and no Popen collected unwaited (whose ResourceWarning would
    fail whichever later test the garbage collector happens to run in)."""
    for cp in planes:
        assert cp.inventory is not None
        provider = cp.inventory.providers["process"]
        assert isinstance(provider, ProcessProvider)
        for child in provider._children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            child.popen.wait(timeout=10)


def embedded_again(plane: ControlPlane, port: int) -> EmbeddedServer:
    """``plane``'s embedded NATS server once more, on ``port`` with the same
    users: a broker come back after the test stopped it (start it yourself)."""
    return EmbeddedServer(
        plane.config.data_dir,
        port=port,
        roles=ROLES,
        authorization=embedded_authorization(plane.bus.subjects),
    )
