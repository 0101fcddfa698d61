"""Which node does what: rendezvous hashing of keys over the live nodes (pure).

Rendezvous (highest random weight) hashing gives every key to the node with
the highest weight for that key. When a node leaves, only the keys it owned
move (each to the node with the next highest weight); keys of live nodes stay
where they were, so a node that dies costs the others its share and nothing
more. The weight is a stable hash (blake2b), never Python's :func:`hash`,
which is salted per process: every process must compute the same owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["NoLiveNodesError", "Placed", "owner", "responsible", "shard"]


class NoLiveNodesError(ValueError):
    """There is no live node to own a key (not even this process's own)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no live node to own {key!r}: the live list is empty")
        self.key = key


def _weight(key: str, node: str) -> int:
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.blake2b(key.encode() + b"\x00" + node.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, live: list[str]) -> str:
    """The live node that owns ``key``: the one with the highest weight for it.

    Args:
        key: What is being placed (an instance id, say).
        live: The live nodes' names, in any order.

    Raises:
        NoLiveNodesError: if ``live`` is empty.
    """
    if not live:
        raise NoLiveNodesError(key)
    # Ties (a 64-bit collision) break by name, so the answer never depends on order.
    return max(live, key=lambda node: (_weight(key, node), node))


def responsible(instance_id: str, placed_on: str | None, live: list[str]) -> str:
    """The node that runs node-local work (health checks, telemetry) of one instance.

    An instance placed on a live node is that node's; one not placed, or
    placed on a node that is not live, is spread over the live nodes by
    :func:`owner` of its id.
    """
    if placed_on is not None and placed_on in live:
        return placed_on
    return owner(instance_id, live)


class Placed(Protocol):
    """What :func:`shard` needs of an instance: its id and its node."""

    @property
    def id(self) -> str: ...

    @property
    def node(self) -> str | None: ...


P = TypeVar("P", bound=Placed)


def shard(items: Iterable[P], node: str, live: list[str]) -> list[P]:
    """The items ``node`` is responsible for, in their order.

    ``node`` counts as live even when ``live`` does not list it yet (a
    process that runs is alive, whatever its view says), so a node never
    drops work because its own heartbeat has not been seen.
    """
    nodes = live if node in live else sorted([*live, node])
    return [i for i in items if responsible(i.id, i.node, nodes) == node]
