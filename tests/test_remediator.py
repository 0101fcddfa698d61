"""Remediator end to end: crash loops converge on ``failed`` and stay there, quietly."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import msgspec

from ctrlplane import Config, ControlPlane
from ctrlplane.bus import Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.declarations import InstanceDecl
from ctrlplane.store.instances import InstanceState
from ctrlplane.workers.remediator import GAVE_UP
from tests.helpers import subscribe_events, wait_for

RECONCILE = timedelta(milliseconds=200)


def decl(name: str, command: list[str]) -> InstanceDecl:
    return msgspec.convert({"name": name, "command": command}, InstanceDecl)


def fast_config(config: Config, decls: list[InstanceDecl]) -> Config:
    return msgspec.convert(
        {
            **msgspec.structs.asdict(config),
            "instances": decls,
            "reconcile_interval": RECONCILE,
            "remediation": {
                "backoff": timedelta(milliseconds=50),
                "max_backoff": timedelta(milliseconds=100),
                "max_restarts": 2,
            },
        },
        Config,
    )


def _count(seen: list[Event], type_: str, name: str) -> int:
    return sum(1 for e in seen if e.type == type_ and e.data.get("name") == name)


def _reconciler_runs(cp: ControlPlane) -> int:
    return next(w.run_count for w in cp.scheduler.workers() if w.name == "reconciler")


def _gave_up(seen: list[Event]) -> list[Event]:
    return [e for e in seen if e.type == "instance.failed" and GAVE_UP in str(e.data["reason"])]


async def _assert_quiet(cp: ControlPlane, seen: list[Event], names: list[str]) -> None:
    """No instance event for ``names`` while several reconcile ticks go by, and
    no more reconciler runs than those ticks (and the events of the last moments)."""
    types = ("instance.drift", "instance.failed", "instance.restarted", "instance.started")
    before = {(t, n): _count(seen, t, n) for t in types for n in names}
    states = {i.name: (i.state, i.state_error) for i in await cp.store.instances.all()}
    runs = _reconciler_runs(cp)
    # Each tick looks at every instance.
    await wait_for(lambda: _reconciler_runs(cp) >= runs + 5, within=20)
    assert {key: _count(seen, *key) for key in before} == before
    assert _reconciler_runs(cp) - runs < 20
    assert {i.name: (i.state, i.state_error) for i in await cp.store.instances.all()} == states


async def test_an_instance_given_up_on_stays_failed_quietly_and_apply_removes_it(
    config: Config, nats_server: ServerInfo, subjects: Subjects, tmp_path: Path
) -> None:
    # Runs once, deletes itself and fails: every restart finds its binary missing.
    vanishing = tmp_path / "vanishing"
    vanishing.write_text('#!/bin/sh\nrm -f "$0"\nexit 1\n')
    vanishing.chmod(0o700)
    decls = [decl("quitter", ["true"]), decl("vanishing", [str(vanishing)])]
    cfg = fast_config(config, decls)
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.>"))
    async with ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.inventory is not None

        async def both_given_up() -> bool:
            instances = await cp.store.instances.all()
            return len(instances) == 2 and all(
                i.state is InstanceState.FAILED and (i.state_error or "").startswith(GAVE_UP)
                for i in instances
            )

        await wait_for(both_given_up, within=30)
        await wait_for(lambda: len(_gave_up(seen)) == 2, within=10)
        await _assert_quiet(cp, seen, ["quitter", "vanishing"])
        # Exited with 0 and restarted as often as allowed; not a restart more.
        assert _count(seen, "instance.restarted", "quitter") == 2
        # The first restart found the binary gone, and so did the second.
        assert _count(seen, "instance.restarted", "vanishing") == 0
        assert _count(seen, "instance.failed", "vanishing") == 3
        assert sorted(str(e.data["name"]) for e in _gave_up(seen)) == ["quitter", "vanishing"]

        result = await cp.inventory.apply([])
        assert result.errors == []
        assert sorted(result.removed) == ["quitter", "vanishing"]
        assert await cp.store.instances.all() == []
    await nc.close()


async def test_an_instance_that_never_started_stays_failed_quietly(
    config: Config, nats_server: ServerInfo, subjects: Subjects
) -> None:
    cfg = fast_config(config, [decl("ghost", ["/nonexistent/ctrlplane-test-no-such-binary"])])
    nc, seen = await subscribe_events(nats_server, subjects.event("instance.>"))
    async with ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.inventory is not None
        # Its deployment failed, and apply said so: nothing to bring back.
        ghost = await cp.store.instances.get("ghost")
        assert ghost.state is InstanceState.FAILED
        assert "cannot execute" in (ghost.state_error or "")
        await wait_for(lambda: _count(seen, "instance.failed", "ghost") == 1, within=10)
        await _assert_quiet(cp, seen, ["ghost"])
        assert (await cp.store.instances.get("ghost")).state_error == ghost.state_error
        assert _count(seen, "instance.drift", "ghost") == 0

        result = await cp.inventory.apply([])
        assert (result.removed, result.errors) == (["ghost"], [])
    await nc.close()


async def test_a_changed_spec_gives_a_given_up_instance_a_fresh_start(config: Config) -> None:
    cfg = fast_config(config, [decl("app", ["true"])])
    async with ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.inventory is not None

        async def given_up() -> bool:
            app = await cp.store.instances.find("app")
            return app is not None and (app.state_error or "").startswith(GAVE_UP)

        await wait_for(given_up, within=30)
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        result = await cp.inventory.apply([decl("app", sleeper)])
        assert result.updated == ["app"] and result.errors == []
        app = await cp.store.instances.get("app")
        assert app.state is InstanceState.RUNNING and app.state_error is None
        # The crash-loop count starts again for the new spec.
        assert await cp.store.instances.restarts_since(app.id, app.created) == []
        # And it stays running: the reconciler finds no drift in it.
        runs = _reconciler_runs(cp)
        await wait_for(lambda: _reconciler_runs(cp) >= runs + 3, within=20)
        assert (await cp.store.instances.get("app")).state is InstanceState.RUNNING
        await cp.inventory.apply([])
