"""``ctrlplane`` end to end, as a user runs it: real processes, the embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

from ctrlplane.bus.server import read_server_info
from tests.helpers import wait_for
from tests.processes import env_for, run_cli, started, stop


async def test_run_on_the_embedded_default_and_list_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:SlotLog"]\n', encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = env_for(logs)
    args = ["run", "--config", str(config), "--data-dir", str(data)]
    with started(args, env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)
        info = read_server_info(data)
        assert info is not None
        assert info.url.startswith("nats://127.0.0.1:")
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        await wait_for(lambda: bool(list(logs.glob("*.jsonl"))), within=30)

        listed = await asyncio.to_thread(
            run_cli, ["workers", "--json", "--data-dir", str(data)], env
        )
        assert listed.returncode == 0, listed.stderr
        workers = json.loads(listed.stdout)
        names = [w["name"] for w in workers]
        assert {"reconciler", "health_runner", "remediator", "audit_recorder"} <= set(names)
        (w,) = [w for w in workers if w["name"] == "slot-log"]
        assert w["kind"] == "periodic"
        assert w["interval"] == "PT1S"
        assert w["run_count"] >= 1
        assert w["process"].endswith(f":{proc.pid}")
        assert set(w) >= {
            "name",
            "interval",
            "kind",
            "running",
            "last_run",
            "last_error",
            "run_count",
            "next_run",
        }

        table = await asyncio.to_thread(run_cli, ["workers", "--data-dir", str(data)], env)
        assert table.returncode == 0, table.stderr
        assert "slot-log" in table.stdout and "periodic" in table.stdout

        code = await asyncio.to_thread(stop, proc)
    assert code == 0, (tmp_path / "run.log").read_text()
    # The embedded server went with it.
    assert read_server_info(data) is None
    assert not _alive(info.pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_without_a_running_server_says_so(tmp_path: Path) -> None:
    result = run_cli(["workers", "--data-dir", str(tmp_path / "nothing")], env_for())
    assert result.returncode == 1
    assert "no embedded nats-server is running" in result.stderr
    assert "ctrlplane run" in result.stderr


def test_invalid_config_names_the_field_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('health_interval = "soon"\n', encoding="utf-8")
    result = run_cli(["run", "--config", str(config), "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 2
    assert "health_interval" in result.stderr
    assert str(config) in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was started


def test_invalid_env_value_names_the_variable(tmp_path: Path) -> None:
    env = env_for(CTRLPLANE_GC_INTERVAL="-5m")
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 2
    assert "gc_interval" in result.stderr and "CTRLPLANE_GC_INTERVAL" in result.stderr


def test_invalid_worker_name_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:BadName"]\n', encoding="utf-8")
    data = tmp_path / "data"
    result = run_cli(["run", "--config", str(config), "--data-dir", str(data)], env_for())
    assert result.returncode == 1
    assert "Bad Name!" in result.stderr and "invalid name" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_server_info(data) is None  # the embedded server was stopped again


def test_unloadable_worker_reference_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:Missing"]\n', encoding="utf-8")
    result = run_cli(["run", "--config", str(config), "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 1
    assert "has no attribute 'Missing'" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_server_binary_is_a_clear_error(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    env = env_for(CTRLPLANE_NATS_SERVER_BINARY=str(fake_bin / "nats-server"))
    (fake_bin / "nats-server").write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    (fake_bin / "nats-server").chmod(0o755)
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 1
    assert "nats-server" in result.stderr
    assert "Traceback" not in result.stderr
