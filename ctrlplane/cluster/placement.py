"""Where host-bound instances run: placement of new ones and failover off dead nodes (pure).

An instance of a host-bound provider (``process``: its instances are
processes on one host) is placed on one node, which alone starts, stops and
watches it. These functions decide where; they do no I/O, so every node that
asks with the same facts gets the same answer, and the store's conditional
``place(..., expect=...)`` makes sure only one node acts on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from msgspec import Struct, field

__all__ = ["Move", "NoLiveNodeError", "Placement", "choose", "load", "plan"]


class NoLiveNodeError(ValueError):
    """There is no live node to place an instance on."""

    def __init__(self, what: str) -> None:
        super().__init__(f"no live node to place {what} on")
        self.what = what


class Placement(Struct, frozen=True, kw_only=True):
    """What placement needs to know of one instance.

    Attributes:
        id: The instance's id.
        node: The node it is placed on; ``None`` when not placed.
        host_bound: Whether its provider is host-bound; others are never placed.
        running: Whether its desired state is ``running``.
    """

    id: str
    node: str | None
    host_bound: bool
    running: bool


class Move(Struct, frozen=True, kw_only=True):
    """One instance to place on ``target``.

    Attributes:
        instance_id: Which instance.
        source: The node it is placed on now (dead), or ``None`` when it was
            never placed (recorded before placement existed).
        target: The live node to place it on.
    """

    instance_id: str
    source: str | None = field(name="from")
    target: str = field(name="to")


def load(instances: Iterable[Placement], live: Sequence[str]) -> Counter[str]:
    """How many host-bound instances each live node holds (every live node listed, even at 0)."""
    counts: Counter[str] = Counter(dict.fromkeys(live, 0))
    for i in instances:
        if i.host_bound and i.node is not None and i.node in counts:
            counts[i.node] += 1
    return counts


def choose(counts: Counter[str]) -> str:
    """The node with the fewest instances; ties go to the first by name.

    Args:
        counts: Instances per live node, as :func:`load` gives them.

    Raises:
        NoLiveNodeError: ``counts`` names no node.
    """
    if not counts:
        raise NoLiveNodeError("an instance")
    return min(counts, key=lambda node: (counts[node], node))


def plan(instances: Sequence[Placement], live: Sequence[str]) -> list[Move]:
    """Which host-bound instances go where, so that every node computes the same plan.

    Moved: instances that should run and are placed on a node not in
    ``live`` (a dead node), and instances never placed (whatever their
    desired state: a node must own them to watch them). An instance that
    should stay stopped keeps its dead node: nothing of it needs to run, and
    a node that returns finds it where it was.

    Instances are taken in the order of their ids and each goes to the live
    node with the fewest instances at that point (ties by name), so a dead
    node's instances are spread over the live ones.

    Returns:
        The moves, in the order of instance ids; empty when ``live`` is empty
        (nowhere to go) or nothing needs to move.
    """
    if not live:
        return []
    alive = set(live)
    counts = load(instances, live)
    moves: list[Move] = []
    for i in sorted(instances, key=lambda i: i.id):
        if not i.host_bound:
            continue
        if i.node is None or (i.running and i.node not in alive):
            target = choose(counts)
            counts[target] += 1
            moves.append(Move(instance_id=i.id, source=i.node, target=target))
    return moves
