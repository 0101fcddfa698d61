"""``ctrlplane apply``, ``instances``, ``health``, ``events`` and ``schema`` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ctrlplane.bus.server import read_server_info
from ctrlplane.config import default_node
from tests.helpers import wait_for
from tests.processes import env_for, run_cli, started, stop
from tests.test_reconciler import free_port


def _instances_toml(*servers: tuple[str, int], extra: str = "") -> str:
    out = [extra]
    for name, port in servers:
        out.append(
            f"""
[[instances]]
name = "{name}"
command = ["{sys.executable}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]

[[instances.checks]]
name = "http"
type = "http"
target = "http://127.0.0.1:{port}/"
timeout = "2s"
"""
        )
    return "\n".join(out)


def _kill_instances(data: Path) -> None:
    """No instance process may outlive the test, whatever happened."""
    db = data / "ctrlplane.db"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        handles = [
            r[0] for r in conn.execute("SELECT handle FROM instances WHERE handle IS NOT NULL")
        ]
    for handle in handles:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(handle.split(":")[0]), signal.SIGKILL)


async def _cli(args: list[str], data: Path) -> Any:
    result = await asyncio.to_thread(run_cli, [*args, "--data-dir", str(data)], env_for())
    assert result.returncode == 0, result.stderr
    return result


async def test_apply_instances_health_and_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    web, api = free_port(), free_port()
    config = tmp_path / "ctrlplane.toml"
    config.write_text(_instances_toml(("web", web), extra='health_interval = "1s"'))
    try:
        with started(
            ["run", "--config", str(config), "--data-dir", str(data)],
            env_for(),
            tmp_path / "run.log",
        ) as proc:
            await wait_for(lambda: read_server_info(data) is not None, within=30)

            async def web_healthy() -> bool:
                out = await _cli(["health", "--json"], data)
                return any(
                    c["check"] == "http" and c["status"] == "healthy"
                    for c in json.loads(out.stdout)
                )

            await wait_for(web_healthy, within=30, interval=0.3)
            listed = json.loads((await _cli(["instances", "--json"], data)).stdout)
            assert [(i["name"], i["state"], i["desired"], i["health"]) for i in listed] == [
                ("web", "running", "running", "healthy")
            ]
            # A process instance is placed on this process's node (the host name).
            assert listed[0]["node"] == default_node()
            header, row = (await _cli(["instances"], data)).stdout.splitlines()[:2]
            assert header.split()[5] == "NODE" and row.split()[5] == default_node()
            # The PID column: the process id in the instance's handle.
            assert header.split()[6] == "PID"
            assert row.split()[6] == listed[0]["handle"].split(":")[0]
            table = (await _cli(["health"], data)).stdout
            assert "web" in table and "healthy" in table and "200 OK" in table

            both = tmp_path / "both.toml"
            both.write_text(_instances_toml(("web", web), ("api", api)))
            out = await _cli(["apply", "-f", str(both)], data)
            assert sorted(out.stdout.splitlines()) == ["api created", "web unchanged"]
            out = await _cli(["apply", "-f", str(both), "--json"], data)
            assert json.loads(out.stdout)["unchanged"] == ["web", "api"]

            only_api = tmp_path / "api.toml"
            only_api.write_text(_instances_toml(("api", api)))
            out = await _cli(["apply", "-f", str(only_api)], data)
            assert sorted(out.stdout.splitlines()) == ["api unchanged", "web removed"]
            listed = json.loads((await _cli(["instances", "--json"], data)).stdout)
            assert [i["name"] for i in listed] == ["api"]

            events = (await _cli(["events", "--json", "--since", "10m"], data)).stdout
            types = [json.loads(line)["type"] for line in events.splitlines()]
            assert types.count("instance.created") == 2
            assert "instance.destroyed" in types and "health.passed" in types
            only = (await _cli(["events", "--type", "instance.destroyed"], data)).stdout
            assert len(only.splitlines()) == 2 and "web" in only.splitlines()[1]

            empty = tmp_path / "empty.toml"
            empty.write_text("instances = []\n")
            out = await _cli(["apply", "-f", str(empty)], data)
            assert out.stdout.splitlines() == ["api removed"]

            # A start that fails: its error in full in the table, and no PID.
            broken = tmp_path / "broken.toml"
            missing = tmp_path / "no-such-program-with-a-long-name-to-show-the-whole-error"
            broken.write_text(f'[[instances]]\nname = "broken"\ncommand = ["{missing}"]\n')
            env = env_for()
            await asyncio.to_thread(
                run_cli, ["apply", "-f", str(broken), "--data-dir", str(data)], env
            )

            async def failed() -> bool:
                out = await _cli(["instances", "--json"], data)
                return any(i["state"] == "failed" for i in json.loads(out.stdout))

            await wait_for(failed, within=30, interval=0.3)
            (shown,) = json.loads((await _cli(["instances", "--json"], data)).stdout)
            header, row = (await _cli(["instances"], data)).stdout.splitlines()[:2]
            assert str(missing) in shown["state_error"]
            assert row.endswith(shown["state_error"]) and row.split()[6] == "-"
            assert await asyncio.to_thread(stop, proc) == 0
    finally:
        _kill_instances(data)


def test_apply_refuses_a_bad_file_before_sending_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[instances]]\nname = "Web"\ncommand = ["x"]\n')
    result = run_cli(["apply", "-f", str(bad), "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 2
    assert "instances[0].name" in result.stderr and str(bad) in result.stderr
    none = tmp_path / "none.toml"
    none.write_text('health_interval = "5s"\n')
    result = run_cli(["apply", "-f", str(none), "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 2
    assert "declares no instances" in result.stderr


def test_schema_events_is_json_schema_of_every_event_type() -> None:
    result = run_cli(["schema", "events"], env_for())
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$ref"] == "#/$defs/Event"
    types = {
        rule["if"]["properties"]["type"]["const"]: rule["then"]["properties"]["data"]
        for rule in schema["allOf"]
    }
    for name in ("instance.drift", "health.failed", "health.recovered", "worker.failed"):
        assert types[name]["$ref"].removeprefix("#/$defs/") in schema["$defs"]
    drift = schema["$defs"]["InstanceDrift"]
    assert set(drift["required"]) == {"name", "recorded", "actual", "detected_at"}
