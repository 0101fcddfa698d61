"""Placement of host-bound instances and the failover plan: pure, no servers."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from ctrlplane.cluster.placement import Move, NoLiveNodeError, Placement, choose, load, plan


def on(node: str | None, id: str, *, running: bool = True, host_bound: bool = True) -> Placement:
    return Placement(id=id, node=node, host_bound=host_bound, running=running)


def test_a_new_instance_goes_to_the_live_node_with_the_fewest() -> None:
    instances = [on("a", "i-1"), on("a", "i-2"), on("b", "i-3"), on("c", "i-4"), on("c", "i-5")]
    assert choose(load(instances, ["a", "b", "c"])) == "b"


def test_ties_go_to_the_first_name_and_an_empty_node_counts() -> None:
    assert choose(load([on("b", "i-1")], ["c", "b", "a"])) == "a"
    assert choose(load([], ["b", "a"])) == "a"


def test_only_host_bound_instances_on_live_nodes_count() -> None:
    instances = [
        on("a", "i-1", host_bound=False),
        on("a", "i-2", host_bound=False),
        on("b", "i-3"),
        on("dead", "i-4"),
        on(None, "i-5"),
    ]
    assert load(instances, ["a", "b"]) == Counter({"a": 0, "b": 1})
    assert choose(load(instances, ["a", "b"])) == "a"


def test_no_live_node_is_an_error_that_says_so() -> None:
    with pytest.raises(NoLiveNodeError, match="no live node"):
        choose(load([], []))


def test_a_dead_nodes_running_instances_are_spread_over_the_live_ones() -> None:
    instances = [
        on("a", "i-1"),
        on("a", "i-2"),
        on("a", "i-3"),
        on("a", "i-4"),
        on("b", "i-5"),
        on("c", "i-6"),
        on("c", "i-7"),
    ]
    moves = plan(instances, ["b", "c"])
    assert moves == [
        Move(instance_id="i-1", source="a", target="b"),
        Move(instance_id="i-2", source="a", target="b"),
        Move(instance_id="i-3", source="a", target="c"),
        Move(instance_id="i-4", source="a", target="b"),
    ]
    after = Counter(m.target for m in moves) + Counter({"b": 1, "c": 2})
    assert after == Counter({"b": 4, "c": 3})


def test_stopped_instances_stay_on_their_dead_node_and_live_nodes_keep_theirs() -> None:
    instances = [on("a", "i-1", running=False), on("b", "i-2"), on("b", "i-3", running=False)]
    assert plan(instances, ["b", "c"]) == []


def test_unplaced_host_bound_instances_are_placed_whatever_their_desired_state() -> None:
    instances = [on(None, "i-1", running=False), on(None, "i-2"), on(None, "i-3", host_bound=False)]
    assert plan(instances, ["a", "b"]) == [
        Move(instance_id="i-1", source=None, target="a"),
        Move(instance_id="i-2", source=None, target="b"),
    ]


def test_nowhere_to_go_plans_nothing() -> None:
    assert plan([on("a", "i-1"), on(None, "i-2")], []) == []


def test_every_node_computes_the_same_plan_whatever_the_order_it_read() -> None:
    rng = random.Random(7)
    instances = [
        on(rng.choice(["a", "b", "c", "d", None]), f"i-{n:03}", running=rng.random() < 0.8)
        for n in range(200)
    ]
    live = ["b", "d"]
    expected = plan(instances, live)
    assert expected  # the data does have dead and unplaced instances
    for _ in range(5):
        shuffled = list(instances)
        rng.shuffle(shuffled)
        assert plan(shuffled, list(reversed(live))) == expected
    moved = {m.instance_id for m in expected}
    for i in instances:
        dead = i.node not in live
        assert (i.id in moved) == (i.node is None or (i.running and dead))
    # Balanced: the moves never widen the gap between the live nodes beyond one.
    before = load(instances, live)
    final = before.copy()
    final.update(m.target for m in expected)
    spread = max(before.values()) - min(before.values())
    assert max(final.values()) - min(final.values()) <= max(spread, 1)


def test_a_move_reads_as_from_and_to_on_the_wire() -> None:
    move = Move(instance_id="i-1", source="a", target="b")
    assert msgspec.json.decode(msgspec.json.encode(move)) == {
        "instance_id": "i-1",
        "from": "a",
        "to": "b",
    }
