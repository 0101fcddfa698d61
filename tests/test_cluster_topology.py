"""compose.yaml's topology run as local processes: 3 NATS nodes, PostgreSQL, 3 replicas.

There is no Docker engine here, so the services of compose.yaml run as local
processes instead: the NATS nodes are a real 3-node nats-server cluster
(:mod:`tests.natscluster`), the database is the PostgreSQL test server, and
each replica is ``ctrlplane <command>`` with the replica's own environment
from compose.yaml. Only what names a host of the Compose network or a
volume is rewritten: NATS and PostgreSQL addresses, the secret files (written
where the volumes would be), the data dir. The test shortens ``node_timeout``
and the reconcile and health intervals and gives the replicas a subject
prefix the test cluster's users are made for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import yaml

from ctrlplane.bus.subjects import Subjects
from ctrlplane.security import ROLES, embedded_authorization
from tests.conftest import TEST_PREFIX
from tests.helpers import wait_for
from tests.natscluster import NatsCluster
from tests.postgres import PASSWORD, PostgresServer
from tests.processes import ROOT, ctrlplane_bin, env_for, run_cli
from tests.test_cli_instances import _instances_toml
from tests.test_nats_cluster import _binary_or_skip
from tests.test_reconciler import free_port

NODE_TIMEOUT = timedelta(seconds=3)
RECONCILE = timedelta(seconds=1)
# Starting a process and seeing it run takes a moment more on a loaded box.
SLACK = timedelta(seconds=15)


def _compose() -> dict[str, Any]:
    with (ROOT / "compose.yaml").open(encoding="utf-8") as file:
        loaded = yaml.safe_load(file)
    assert isinstance(loaded, dict)
    return loaded


def _replicas() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return {
        name: svc for name, svc in services.items() if "build" in svc and svc.get("restart") != "no"
    }


class Replica:
    """One compose replica as a local ``ctrlplane`` process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.node = env["CTRLPLANE_NODE"]
        self.log = log
        self.health: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [ctrlplane_bin(), *self.argv], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ctrlplane ARGS`` as ``docker compose exec <replica>`` would run it."""
        return await asyncio.to_thread(run_cli, list(args), self.env, 60)

    async def healthy(self) -> bool:
        """The replica's compose health check, run as Docker would (this
        Python standing for the image's)."""
        assert self.health[:2] == ["python", "-c"], self.health
        probe = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, *self.health[1:]],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return probe.returncode == 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _rewrite(
    name: str,
    service: dict[str, Any],
    *,
    root: Path,
    nats: NatsCluster,
    store: str,
    prefix: str,
) -> Replica:
    env = {str(k): str(v) for k, v in service["environment"].items()}
    # Compose's NATS hosts, in the order the replica lists them: nats-1 is node 0.
    urls = []
    for url in env["CTRLPLANE_NATS_URL"].split(","):
        host = urlsplit(url.strip()).hostname or ""
        index = int(host.rsplit("-", 1)[1]) - 1
        urls.append(nats.nodes[index].url)
    env["CTRLPLANE_NATS_URL"] = ",".join(urls)
    # The files the one-shot services write on their volumes.
    secrets = root / "secrets"
    nats_creds = secrets / env["CTRLPLANE_NATS_CREDENTIALS"].lstrip("/")
    nats_creds.parent.mkdir(parents=True, exist_ok=True)
    nats_creds.write_text(f"service:{nats.secrets['service']}\n")
    nats_creds.chmod(0o600)
    env["CTRLPLANE_NATS_CREDENTIALS"] = str(nats_creds)
    pg_secret = secrets / env["CTRLPLANE_STORE_PASSWORD_FILE"].lstrip("/")
    pg_secret.parent.mkdir(parents=True, exist_ok=True)
    pg_secret.write_text(PASSWORD + "\n")
    env["CTRLPLANE_STORE_PASSWORD_FILE"] = str(pg_secret)
    compose_store = urlsplit(env["CTRLPLANE_STORE_URL"])
    ours = urlsplit(store)
    assert compose_store.username == ours.username, "the test server has compose's user"
    env["CTRLPLANE_STORE_URL"] = store
    # Each container has a port 8080 of its own; here the replicas share one host.
    http_port = free_port()
    compose_http = env["CTRLPLANE_HTTP_ADDR"].rpartition(":")[2]
    env.update(
        CTRLPLANE_HTTP_ADDR=f"127.0.0.1:{http_port}",
        CTRLPLANE_SUBJECT_PREFIX=prefix,
        CTRLPLANE_NODE_TIMEOUT=f"{NODE_TIMEOUT.total_seconds():g}s",
        CTRLPLANE_RECONCILE_INTERVAL=f"{RECONCILE.total_seconds():g}s",
        CTRLPLANE_HEALTH_INTERVAL="1s",
        CTRLPLANE_STOP_GRACE="2s",
    )
    argv = [str(a) for a in service["command"]]
    data_dir = argv.index("--data-dir") + 1
    argv[data_dir] = str(root / name)
    replica = Replica(name, argv, env_for(None, **env), root / f"{name}.log")
    compose_probe = f"127.0.0.1:{compose_http}/"
    health = [str(a) for a in service["healthcheck"]["test"][1:]]
    assert any(compose_probe in a for a in health), (health, compose_probe)
    replica.health = [a.replace(compose_probe, f"127.0.0.1:{http_port}/") for a in health]
    return replica


@pytest_asyncio.fixture
async def topology(tmp_path: Path, postgres_server: PostgresServer) -> AsyncIterator[list[Replica]]:
    _binary_or_skip()
    database = await postgres_server.create_database()
    store = postgres_server.url(database, password=False)
    prefix = f"{TEST_PREFIX}.k{uuid.uuid4().hex[:8]}"
    async with NatsCluster(
        tmp_path / "nats", roles=ROLES, authorization=embedded_authorization(Subjects(TEST_PREFIX))
    ) as nats:
        replicas = [
            _rewrite(name, svc, root=tmp_path, nats=nats, store=store, prefix=prefix)
            for name, svc in _replicas().items()
        ]
        try:
            yield replicas
        finally:
            for replica in replicas:
                replica.kill()
            with contextlib.suppress(Exception):
                await postgres_server.drop_database(database)


@contextlib.contextmanager
def _reaping(handles: set[str]) -> Iterator[None]:
    """No instance process may outlive the test."""
    try:
        yield
    finally:
        for handle in handles:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(handle.split(":")[0]), signal.SIGKILL)


@pytest.mark.timeout(240)
async def test_the_compose_topology_applies_once_answers_alike_and_survives_a_node(
    topology: list[Replica], tmp_path: Path
) -> None:
    replicas = topology
    assert len({r.node for r in replicas}) == len(replicas) == 3
    for replica in replicas:
        replica.start()
    for replica in replicas:
        await wait_for(replica.healthy, within=90, interval=0.5)

    first = replicas[0]
    declared = tmp_path / "instances.toml"
    declared.write_text(_instances_toml(("web", free_port()), ("api", free_port())))
    handles: set[str] = set()
    with _reaping(handles):
        applied = await first.cli("apply", "-f", str(declared))
        assert applied.returncode == 0, applied.stderr
        assert sorted(applied.stdout.splitlines()) == ["api created", "web created"]

        async def listed(replica: Replica) -> list[dict[str, Any]]:
            out = await replica.cli("instances", "--json")
            assert out.returncode == 0, out.stderr
            found: list[dict[str, Any]] = json.loads(out.stdout)
            handles.update(i["handle"] for i in found if i.get("handle"))
            return found

        async def all_running_and_healthy() -> bool:
            found = await listed(first)
            return len(found) == 2 and all(
                i["state"] == "running" and i["health"] == "healthy" for i in found
            )

        await wait_for(all_running_and_healthy, within=60, interval=0.5)

        # The same answer whichever replica (and NATS node) is asked.
        def shown(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            return [(i["name"], i["node"], i["state"], i["handle"]) for i in found]

        answers = [shown(await listed(replicas[n % 3])) for n in range(20)]
        assert all(a == answers[0] for a in answers), answers
        placed = {name: node for name, node, _, _ in answers[0]}
        assert set(placed.values()) <= {r.node for r in replicas}
        # Applying the same file again through another replica changes nothing.
        again = await replicas[1].cli("apply", "-f", str(declared))
        assert sorted(again.stdout.splitlines()) == ["api unchanged", "web unchanged"]

        # A node dies: its ctrlplane process and the instances it ran.
        doomed = next(r for r in replicas if r.node == placed["web"])
        web = next(i for i in await listed(first) if i["name"] == "web")
        killed_at = time.monotonic()
        doomed.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(web["handle"].split(":")[0]), signal.SIGKILL)
        survivor = next(r for r in replicas if r is not doomed)

        async def web_moved() -> bool:
            found = {i["name"]: i for i in await listed(survivor)}
            moved = found["web"]
            return bool(moved["node"] != doomed.node and moved["state"] == "running")

        bound = NODE_TIMEOUT + RECONCILE + SLACK
        await wait_for(web_moved, within=bound.total_seconds(), interval=0.3)
        took = time.monotonic() - killed_at
        print(
            f"web ran again on another node {took:.1f} s after its node was killed "
            f"(node_timeout {NODE_TIMEOUT.total_seconds():g} s, "
            f"reconcile {RECONCILE.total_seconds():g} s)"
        )
        events = await survivor.cli("events", "--json", "--since", "10m")
        rescheduled = [
            e
            for e in (json.loads(line) for line in events.stdout.splitlines())
            if e["type"] == "instance.rescheduled"
        ]
        assert len(rescheduled) == 1, rescheduled
        assert rescheduled[0]["data"]["from"] == doomed.node
        nodes = json.loads((await survivor.cli("nodes", "--json")).stdout)
        states = {n["name"]: n["live"] for n in nodes["nodes"]}
        assert states[doomed.node] is False and sum(states.values()) == 2
