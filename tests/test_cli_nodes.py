"""``ctrlplane nodes`` and a second process on another store, end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from ctrlplane.app import ControlPlane
from ctrlplane.bus.server import read_server_info
from ctrlplane.cluster.errors import StoreMismatchError
from ctrlplane.config import Config
from tests.helpers import wait_for
from tests.processes import env_for, run_cli, started, stop


async def test_nodes_lists_this_node_its_process_and_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = env_for(CTRLPLANE_NODE="edge-1")
    with started(["run", "--data-dir", str(data)], env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)

        listing = ["nodes", "--json", "--data-dir", str(data)]

        async def listed() -> bool:
            return (await asyncio.to_thread(run_cli, listing, env)).returncode == 0

        await wait_for(listed, within=30, interval=0.3)
        out = await asyncio.to_thread(run_cli, listing, env)
        reply = json.loads(out.stdout)
        [node] = reply["nodes"]
        assert (node["name"], node["live"], node["instances"]) == ("edge-1", True, 0)
        assert node["store_ids"] == [reply["store_id"]] and reply["store_id"].startswith("s-")
        [process] = node["processes"]
        assert process["live"] and process["process"].endswith(f":{proc.pid}")

        table = await asyncio.to_thread(run_cli, ["nodes", "--data-dir", str(data)], env)
        header, row = table.stdout.splitlines()
        assert header.split()[:3] == ["NODE", "STATE", "PROCESSES"]
        assert row.split()[:2] == ["edge-1", "live"] and reply["store_id"] in row

        live = await asyncio.to_thread(run_cli, ["nodes", "--check", "edge-1", *listing[2:]], env)
        assert live.returncode == 0, live.stderr
        gone = await asyncio.to_thread(run_cli, ["nodes", "--check", "edge-9", *listing[2:]], env)
        assert gone.returncode == 1 and "edge-9" in gone.stderr

        # A second replica with a store of its own (its own SQLite file) on
        # the same NATS would split the state: it refuses to start.
        info = read_server_info(data)
        assert info is not None
        second = await asyncio.to_thread(
            run_cli,
            ["run", "--data-dir", str(tmp_path / "other")],
            env_for(CTRLPLANE_NODE="edge-2", CTRLPLANE_NATS_URL=info.role_url("service")),
            60,
        )
        assert second.returncode != 0
        assert reply["store_id"] in second.stderr and "edge-1" in second.stderr
        assert "store_url" in second.stderr
        assert await asyncio.to_thread(stop, proc) == 0


async def test_a_replica_on_another_store_refuses_to_start(config: Config, tmp_path: Path) -> None:
    first = ControlPlane(config, load_plugins=False)
    await first.start()
    try:
        other = msgspec.structs.replace(config, data_dir=tmp_path / "other", node="b")
        second = ControlPlane(other, load_plugins=False)
        with pytest.raises(StoreMismatchError) as caught:
            await second.start()
        assert caught.value.theirs == first.store.identity
        assert caught.value.ours != first.store.identity
        # Nothing of the second was left running: the first still sees one node.
        assert first.nodes.live() == [config.node]
    finally:
        await first.stop()
