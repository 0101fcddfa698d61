"""What the cluster's parts need of each other."""

from __future__ import annotations

from typing import Protocol


class NodeView(Protocol):
    """Which nodes of the cluster are alive, as this process sees them.

    Kept current by heartbeats in the background, so that asking is cheap
    enough for every sweep and every placement.
    """

    @property
    def name(self) -> str:
        """The node this process belongs to."""
        ...

    def live(self) -> list[str]:
        """The live nodes' names, sorted; this process's own node while it runs."""
        ...
