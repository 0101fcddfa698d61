"""What goes wrong when processes form a cluster."""

from __future__ import annotations

from ctrlplane.errors import CtrlplaneError


class ClusterError(CtrlplaneError):
    """Base class of the cluster's errors."""


class StoreMismatchError(ClusterError):
    """A live process of the cluster uses another store than this one.

    Joining would split the domain state (each store answering differently),
    so the process refuses to start instead.

    Attributes:
        node: The other process's node.
        process: The other process.
        theirs: The identity of the store it uses.
        ours: The identity of this process's store.
    """

    def __init__(self, *, node: str, process: str, theirs: str, ours: str) -> None:
        self.node = node
        self.process = process
        self.theirs = theirs
        self.ours = ours
        super().__init__(
            f"node {node!r} (process {process}) uses store {theirs}, this process uses store "
            f"{ours}: every process of a cluster must share one store; give them all the same "
            "store_url (or separate subject_prefix values for separate control planes)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.node, self.process, self.theirs, self.ours))


def _rebuild(node: str, process: str, theirs: str, ours: str) -> StoreMismatchError:
    return StoreMismatchError(node=node, process=process, theirs=theirs, ours=ours)
