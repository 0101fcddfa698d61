"""A client in another language: nats.js and a strict JSON Schema validator.

``tests/interop/client.cjs`` uses the control plane as a service written in
JavaScript would: it discovers the API with the NATS micro protocol,
publishes a CloudEvent a worker reacts to, reads the events stream through a
JetStream consumer validating each event against ``ctrlplane schema events``
with Ajv (draft 2020-12, strict, formats checked), and calls an API endpoint.

Its npm packages (``nats``, ``ajv``, ``ajv-formats``) are not installed by
the tests: ``.ci/run`` installs them into a temporary folder and names it in
``CTRLPLANE_INTEROP_NODE_MODULES``. Without node or that folder the test
skips, except under CI, where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.bus import Event
from ctrlplane.bus.subjects import Subjects
from ctrlplane.declarations import InstanceDecl
from ctrlplane.store.health import CheckSpec
from tests.helpers import reap_instances, wait_for

CLIENT = Path(__file__).parent / "interop" / "client.cjs"
MODULES_ENV = "CTRLPLANE_INTEROP_NODE_MODULES"
WITHIN = 60.0
"""Seconds the client may take; it bounds its own waits by the same."""


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the interop test (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture
def node() -> tuple[str, Path]:
    """The node binary and the folder holding the client's npm packages."""
    binary = shutil.which("node")
    if binary is None:
        _missing("node is not installed")
    assert binary is not None
    folder = os.environ.get(MODULES_ENV)
    if not folder:
        _missing(f"{MODULES_ENV} names no folder of npm packages")
    assert folder is not None
    modules = Path(folder)
    for package in ("nats", "ajv", "ajv-formats"):
        if not (modules / package / "package.json").is_file():
            _missing(f"{package} is not installed in {modules}")
    return binary, modules


class Ponger:
    """Answers each ``interop.ping`` with an ``interop.pong`` naming it."""

    name = "interop-ponger"
    interval = timedelta(0)
    subscriptions = ("interop.ping",)

    def __init__(self) -> None:
        self.pings: list[Event] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.pings.append(ctx.event)
        await ctx.emit("interop.pong", {"ping": ctx.event.id})


@pytest_asyncio.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Ponger]]:
    """A control plane on its own embedded server, with one instance that has a check,
    so that built-in events (instance, deploy, health) are on the stream."""
    config = Config(
        data_dir=tmp_path / "data",
        subject_prefix=f"interop{uuid.uuid4().hex[:8]}",
        stop_grace=timedelta(seconds=2),
        reconcile_interval=timedelta(seconds=1),
        health_interval=timedelta(seconds=1),
        publisher_event_types=["interop.*"],
        instances=[
            InstanceDecl(
                name="web",
                command=[sys.executable, "-c", "import time; time.sleep(120)"],
                checks=[
                    CheckSpec(name="alive", type="command", command=[sys.executable, "-c", "pass"])
                ],
            )
        ],
    )
    cp = ControlPlane(config, load_plugins=False)
    ponger = Ponger()
    cp.register(ponger)
    await cp.start()
    try:
        yield cp, ponger
    finally:
        await cp.stop()
        reap_instances([cp])


def _schema(kind: str, path: Path) -> Path:
    """``ctrlplane schema KIND``, from the real command, written to ``path``."""
    out = subprocess.run(
        [sys.executable, "-m", "ctrlplane", "schema", kind],
        check=True,
        capture_output=True,
        timeout=60,
    )
    path.write_bytes(out.stdout)
    return path


async def _run_client(binary: str, modules: Path, settings: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        binary,
        str(CLIENT),
        str(settings),
        env={**os.environ, "NODE_PATH": str(modules)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WITHIN + 30):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_a_nats_js_client_reads_publishes_and_calls_the_api(
    plane: tuple[ControlPlane, Ponger], node: tuple[str, Path], tmp_path: Path
) -> None:
    cp, ponger = plane
    assert cp.server is not None
    subjects: Subjects = cp.bus.subjects
    # Built-in events first: the instance started and its check passed.
    seen: set[str] = set()

    async def types_on_stream() -> bool:
        info = await cp.bus.js.stream_info(
            subjects.events_stream, subjects_filter=subjects.all_events
        )
        seen.update(subjects.event_type_of(s) for s in (info.state.subjects or {}))
        return {"instance.started", "health.passed"} <= seen

    await wait_for(types_on_stream, within=WITHIN)

    ping_id = uuid.uuid4().hex
    settings = tmp_path / "interop.json"
    info = cp.server.info
    settings.write_text(
        json.dumps(
            {
                "server": info.url,
                "observer_password": info.secrets["observer"],
                "publisher_password": info.secrets["publisher"],
                "prefix": subjects.prefix,
                "stream": subjects.events_stream,
                "service_name": "ctrlplane",
                "processes": 1,
                "endpoint": "instances",
                "endpoint_reply": "InstancesReply",
                "events_schema": str(_schema("events", tmp_path / "events.json")),
                "api_schema": str(_schema("api", tmp_path / "api.json")),
                "ping_id": ping_id,
                "timeout_ms": int(WITHIN * 1000),
            }
        )
    )
    out = await _run_client(*node, settings)

    # Discovery through $SRV.INFO lists the versioned endpoints.
    assert out["services"], "no ctrlplane service answered $SRV.INFO"
    endpoints = set(out["services"][0]["endpoints"])
    assert f"{subjects.prefix}.api.v1.instances" in endpoints
    # The second publish with the same Nats-Msg-Id was dropped by JetStream ...
    first, second = out["acks"]
    assert not first["duplicate"] and second["duplicate"] and first["seq"] == second["seq"]
    # ... so the worker reacted once, and its answer reached the client.
    assert [e.id for e in ponger.pings] == [ping_id]
    assert ponger.pings[0].source == "interop/nats.js"
    events = out["events"]
    assert events["pong"] is not None, f"no interop.pong among {events['types']}"
    assert events["pong"]["source"] == Ponger.name
    # Every event on the stream, built-in ones included, is valid for Ajv.
    assert {"instance.started", "health.passed", "interop.ping"} <= set(events["types"])
    assert events["invalid"] == []
    # The API: a reply valid against `ctrlplane schema api`, and the error
    # convention for a body that is not JSON.
    api = out["api"]
    assert api["error"] is None
    assert api["valid"], api["errors"]
    assert [i["name"] for i in api["body"]["instances"]] == ["web"]
    bad = api["bad_request"]
    assert bad["headers"]["code"] == 400
    assert bad["body"]["error"]["code"] == 400
    assert bad["body"]["error"]["message"]
