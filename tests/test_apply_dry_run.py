"""``apply`` with ``dry_run`` and ``ctrlplane apply --dry-run``: the plan is what
apply then does, and nothing is written or published meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from ctrlplane.api import ApplyReply, ApplyRequest, RemoteError, request
from ctrlplane.app import ControlPlane
from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.server import ServerInfo
from ctrlplane.config import Config
from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.plan import Action, ApplyPlan, DomainPlan, FieldChange, InstancePlan
from tests.processes import env_for, run_cli

CHECK = {"name": "http", "target": "http://127.0.0.1:9/"}


def _decl(name: str, **fields: object) -> InstanceDecl:
    # Stopped: nothing is started, so what the plan says is all that happens.
    base = {"name": name, "command": ["sleep", "30"], "desired_state": "stopped"}
    return msgspec.convert({**base, **fields}, InstanceDecl)


RECORDED = [_decl("old"), _decl("same"), _decl("web", env={"A": "1"}, checks=[CHECK])]
DOMAINS = [DomainDecl(hostname="a.test", instance="web")]

DECLARED = [
    _decl("new"),
    _decl(
        "web",
        command=["sleep", "60"],
        env={"A": "2"},
        checks=[{**CHECK, "timeout": timedelta(seconds=5)}],
    ),
    _decl("same"),
]
DECLARED_DOMAINS = [
    DomainDecl(hostname="a.test", instance="web", renew_before=timedelta(days=20)),
    DomainDecl(hostname="b.test", instance="new"),
]
PLAN = ApplyPlan(
    instances=[
        InstancePlan(name="new", action=Action.CREATE),
        InstancePlan(
            name="web",
            action=Action.UPDATE,
            changes=[
                FieldChange(field="command", old='["sleep","30"]', new='["sleep","60"]'),
                FieldChange(field="env.A", old='"1"', new='"2"'),
                FieldChange(field="checks.http.timeout", old="2s", new="5s"),
            ],
        ),
        InstancePlan(name="same", action=Action.UNCHANGED),
        InstancePlan(name="old", action=Action.REMOVE),
    ],
    domains=[
        DomainPlan(
            hostname="a.test",
            action=Action.UPDATE,
            changes=[FieldChange(field="renew_before", old="30d", new="20d")],
        ),
        DomainPlan(hostname="b.test", action=Action.CREATE),
    ],
)


@pytest_asyncio.fixture
async def plane(config: Config) -> AsyncIterator[ControlPlane]:
    cfg = msgspec.structs.replace(config, instances=RECORDED, domains=DOMAINS)
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def _recorded(cp: ControlPlane) -> Any:
    """Everything apply writes, as the store holds it."""
    s = cp.store
    instances = await s.instances.all()
    return (
        instances,
        [await s.health.states(i.id, with_last=False) for i in instances],
        await s.domains.all(),
        await s.deployments.list(limit=1000),
    )


class _Lifecycle:
    """Every instance, domain and deploy event published under the test's prefix."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[str] = []
        self.marker = asyncio.Event()

    async def __aenter__(self) -> _Lifecycle:
        self.sub = await self.bus.nc.subscribe(self.bus.subjects.event(">"), cb=self._on)
        await self.bus.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        kind = msg.subject.split(".events.", 1)[1]
        if kind == "test.marker":
            self.marker.set()
        elif kind.split(".")[0] in ("instance", "domain", "deploy"):
            self.seen.append(kind)

    async def settle(self) -> list[str]:
        """What was seen until a marker published now comes back (events keep their order)."""
        await self.bus.publish_event(Event(type="test.marker", source="test"))
        async with asyncio.timeout(10):
            await self.marker.wait()
        return self.seen


async def _dry_run(bus: Bus, decls: list[InstanceDecl], domains: Any = None) -> ApplyReply:
    body = ApplyRequest(instances=decls, domains=domains, dry_run=True)
    return await request(bus, "apply", body, ApplyReply, within=30)


async def test_the_plan_is_what_apply_then_does_and_changes_nothing(
    plane: ControlPlane, bus: Bus
) -> None:
    before = await _recorded(plane)
    async with _Lifecycle(bus) as published:
        reply = await _dry_run(bus, DECLARED, DECLARED_DOMAINS)
        assert await published.settle() == []
    assert await _recorded(plane) == before
    assert reply.plan == PLAN
    result, domains = reply.result, reply.domains
    assert (result.created, result.updated, result.removed, result.unchanged, result.errors) == (
        ["new"],
        ["web"],
        ["old"],
        ["same"],
        [],
    )
    assert domains is not None
    assert (domains.created, domains.updated, domains.removed) == (["b.test"], ["a.test"], [])

    # The real apply does what the plan said.
    body = ApplyRequest(instances=DECLARED, domains=DECLARED_DOMAINS)
    applied = await request(bus, "apply", body, ApplyReply, within=60)
    assert applied.plan is None
    assert applied.result == result and applied.domains == domains
    again = await _dry_run(bus, DECLARED, DECLARED_DOMAINS)
    assert again.plan is not None
    assert {p.action for p in again.plan.instances} == {Action.UNCHANGED}
    assert {p.action for p in again.plan.domains or []} == {Action.UNCHANGED}
    # Without domains the recorded ones are left as they are: not in the plan.
    assert (await _dry_run(bus, DECLARED)).plan == ApplyPlan(instances=again.plan.instances)


async def test_a_dry_run_is_refused_as_apply_would_be(plane: ControlPlane, bus: Bus) -> None:
    before = await _recorded(plane)
    unknown = [_decl("x", provider="nosuch")]
    for dry_run in (True, False):
        body = ApplyRequest(instances=unknown, dry_run=dry_run)
        with pytest.raises(RemoteError) as info:
            await request(bus, "apply", body, ApplyReply, within=30)
        assert info.value.code == 400 and "unknown provider 'nosuch'" in info.value.message
    stray = [DomainDecl(hostname="c.test", instance="nobody")]
    with pytest.raises(RemoteError) as info:
        await _dry_run(bus, DECLARED, stray)
    assert info.value.code == 400 and "nobody" in info.value.message
    assert await _recorded(plane) == before


async def test_the_cli_prints_the_plan_and_json(
    plane: ControlPlane, bus: Bus, nats_server: ServerInfo, tmp_path: Path
) -> None:
    file = tmp_path / "apply.toml"
    file.write_text(
        """
[[instances]]
name = "web"
command = ["sleep", "60"]
desired_state = "stopped"
env = { A = "1", B = "new" }
[[instances.checks]]
name = "http"
target = "http://127.0.0.1:9/"

[[domains]]
hostname = "a.test"
instance = "web"
issuer = "acme"
""",
        encoding="utf-8",
    )
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=bus.subjects.prefix)
    at = ["--nats-url", nats_server.client_url]
    before = await _recorded(plane)
    args = ["apply", "-f", str(file), "--dry-run", *at]
    async with _Lifecycle(bus) as published:
        out = await asyncio.to_thread(run_cli, args, env)
        js = await asyncio.to_thread(run_cli, [*args, "--json"], env)
        assert await published.settle() == []
    assert await _recorded(plane) == before
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "web: update",
        '  command: ["sleep","30"] -> ["sleep","60"]',
        '  env.B: (absent) -> "new"',
        "old: remove",
        "same: remove",
        "domain a.test: update",
        '  issuer: "local" -> "acme"',
        "dry run: 0 to create, 1 to update, 2 to remove, 0 unchanged; nothing was changed",
    ]
    assert js.returncode == 0, js.stderr
    answer = json.loads(js.stdout)
    assert answer["result"]["removed"] == ["old", "same"]
    assert answer["plan"]["instances"][0] == {
        "name": "web",
        "action": "update",
        "changes": [
            {"field": "command", "old": '["sleep","30"]', "new": '["sleep","60"]'},
            {"field": "env.B", "new": '"new"'},  # absent, never null
        ],
    }
