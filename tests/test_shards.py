"""cluster.shards: rendezvous ownership and the health/telemetry shard rule, without servers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest

from ctrlplane.cluster.shards import NoLiveNodesError, owner, responsible, shard

KEYS = [f"inst-{i:05d}" for i in range(3000)]
NODES = ["node-a", "node-b", "node-c"]


@dataclass(frozen=True)
class _Instance:
    id: str
    node: str | None = None


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_key_is_owned_by_exactly_one_live_node(count: int) -> None:
    live = NODES[:count]
    shards = {node: set(shard([_Instance(k) for k in KEYS], node, live)) for node in live}
    owned = Counter(i.id for s in shards.values() for i in s)
    assert set(owned) == set(KEYS)
    assert set(owned.values()) == {1}
    # Spread, not piled on one node: each share within 15 % of fair.
    fair = len(KEYS) / count
    assert all(abs(len(s) - fair) < 0.15 * fair for s in shards.values())


def test_a_dead_nodes_share_moves_and_nothing_else() -> None:
    before = {k: owner(k, NODES) for k in KEYS}
    after = {k: owner(k, ["node-a", "node-c"]) for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "node-b"}
    assert moved  # node-b owned something
    # And back: a node that returns takes back exactly its old share.
    assert {k: owner(k, NODES) for k in KEYS} == before


def test_the_owner_does_not_depend_on_the_order_of_the_live_list() -> None:
    for key in KEYS[:200]:
        assert owner(key, NODES) == owner(key, list(reversed(NODES))) == owner(key, sorted(NODES))


def test_the_owner_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the owner must not be.
    code = (
        "from ctrlplane.cluster.shards import owner\n"
        f"print(','.join(owner(k, {NODES!r}) for k in {KEYS[:50]!r}))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert other == ",".join(owner(k, NODES) for k in KEYS[:50])


def test_no_live_node_is_an_error_that_names_the_key() -> None:
    with pytest.raises(NoLiveNodesError, match="inst-1"):
        owner("inst-1", [])


def test_a_placed_instance_belongs_to_its_node_while_that_node_lives() -> None:
    assert responsible("x", "node-b", NODES) == "node-b"
    assert {responsible(k, "node-c", NODES) for k in KEYS[:100]} == {"node-c"}


def test_a_placed_instance_of_a_dead_node_is_spread_like_an_unplaced_one() -> None:
    live = ["node-a", "node-c"]
    for key in KEYS[:300]:
        assert responsible(key, "node-b", live) == owner(key, live) == responsible(key, None, live)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_mixed_population_is_covered_exactly_once(count: int) -> None:
    live = NODES[:count]
    # A third on each node (one of them perhaps dead), a third unplaced.
    items = [_Instance(k, NODES[i % 3] if i % 2 else None) for i, k in enumerate(KEYS)]
    owned = Counter(i.id for node in live for i in shard(items, node, live))
    assert owned == Counter(KEYS)
    for node in live:
        mine = shard(items, node, live)
        assert all(i.node in (node, None) or i.node not in live for i in mine)
        assert all(i in mine for i in items if i.node == node)


def test_a_node_missing_from_its_own_view_still_takes_its_share() -> None:
    # Right after start, before its first heartbeat shows: it is alive.
    items = [_Instance(k) for k in KEYS[:300]]
    mine = shard(items, "node-c", ["node-a", "node-b"])
    assert mine == shard(items, "node-c", NODES)
    assert mine
