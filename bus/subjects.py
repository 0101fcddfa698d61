"""NATS subject and stream names, all derived from one configurable prefix."""

from __future__ import annotations

import re

from msgspec import Struct

# Used with fullmatch only: "$" would let a trailing newline through, and a
# name with a newline becomes a folder, a subject and a log line.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_TOKEN_RE = re.compile(r"[a-z0-9_-]+")
_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
# An event pattern may use NATS wildcards: "*" for one token, ">" for the rest.
_PATTERN_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+|\*|>")

API_VERSION = "v1"
"""The control API version this code serves; it is the subject's token after ``api``."""


def is_valid_prefix(prefix: str) -> bool:
    """Whether ``prefix`` can start NATS subjects (dot-separated, no wildcards)."""
    return bool(_PREFIX_RE.fullmatch(prefix))


def is_valid_token(token: str) -> bool:
    """Whether ``token`` is a valid worker name: lowercase letters, digits, ``-``, ``_``."""
    return bool(_TOKEN_RE.fullmatch(token))


def is_valid_event_type(event_type: str) -> bool:
    """Whether ``event_type`` is a concrete event type such as ``health.failed``."""
    return bool(_EVENT_TYPE_RE.fullmatch(event_type))


def is_valid_event_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is an event type that may use NATS wildcards."""
    tokens = pattern.split(".")
    if not all(_PATTERN_TOKEN_RE.fullmatch(t) for t in tokens):
        return False
    return ">" not in tokens[:-1]


class Subjects(Struct, frozen=True):
    """The subjects and stream names of one control plane, under ``prefix``.

    Several control planes can share one NATS server by using different
    prefixes; the stream names are derived from the prefix so they do not
    collide either.
    """

    prefix: str = "ctrlplane"

    def __post_init__(self) -> None:
        if not is_valid_prefix(self.prefix):
            raise ValueError(
                f"subject prefix {self.prefix!r} is not valid: use letters, digits, "
                "'-' and '_' in dot-separated tokens"
            )

    @property
    def _stream_base(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", self.prefix).upper()

    @property
    def ticks_stream(self) -> str:
        """The work-queue stream that holds ticks."""
        return f"{self._stream_base}_TICKS"

    @property
    def events_stream(self) -> str:
        """The limits stream that holds domain events."""
        return f"{self._stream_base}_EVENTS"

    @property
    def dlq_stream(self) -> str:
        """The limits stream that keeps dead letters, so none is lost unread."""
        return f"{self._stream_base}_DLQ"

    @property
    def replay_stream(self) -> str:
        """The work-queue stream that holds dead letters sent back to their worker."""
        return f"{self._stream_base}_REPLAY"

    @property
    def slots_bucket(self) -> str:
        """The key-value bucket that records completed slots of periodic workers."""
        return f"{self._stream_base}_SLOTS"

    @property
    def nodes_bucket(self) -> str:
        """The key-value bucket of the cluster's node heartbeats."""
        return f"{self._stream_base}_NODES"

    @property
    def controls_bucket(self) -> str:
        """The key-value bucket of worker controls (which workers are paused)."""
        return f"{self._stream_base}_CONTROLS"

    def tick(self, worker: str, node: str | None = None) -> str:
        """The subject of ticks for ``worker``; for a node-scoped worker, those
        of its runs on ``node`` (``<prefix>.tick.<worker>.<node>``)."""
        if node is None:
            return f"{self.prefix}.tick.{worker}"
        return f"{self.prefix}.tick.{worker}.{node}"

    @property
    def all_ticks(self) -> str:
        """Every tick subject, cluster-scoped and node-scoped."""
        return f"{self.prefix}.tick.>"

    def event(self, event_type: str) -> str:
        """The subject of an event type (or pattern) such as ``health.failed``."""
        return f"{self.prefix}.events.{event_type}"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    def event_type_of(self, subject: str) -> str:
        """The event type carried by an events subject."""
        head = f"{self.prefix}.events."
        return subject[len(head) :] if subject.startswith(head) else subject

    def dlq(self, worker: str) -> str:
        """The dead-letter subject of ``worker``."""
        return f"{self.prefix}.dlq.{worker}"

    @property
    def all_dlq(self) -> str:
        return f"{self.prefix}.dlq.*"

    def replay(self, worker: str, node: str | None = None) -> str:
        """The subject of messages replayed to ``worker`` alone (for a
        node-scoped worker, to its runs on ``node``): ``<prefix>.replay.<worker>``.

        Not the original event subject: publishing there would deliver the
        event again to every subscriber, not to the worker that gave up on it.
        """
        if node is None:
            return f"{self.prefix}.replay.{worker}"
        return f"{self.prefix}.replay.{worker}.{node}"

    @property
    def all_replay(self) -> str:
        """Every replay subject, cluster-scoped and node-scoped."""
        return f"{self.prefix}.replay.>"

    def api(self, endpoint: str, version: str = API_VERSION) -> str:
        """The subject of a control API endpoint, ``<prefix>.api.<version>.<endpoint>``."""
        return f"{self.prefix}.api.{version}.{endpoint}"

    @property
    def all_api(self) -> str:
        """Every control API subject, of every version."""
        return f"{self.prefix}.api.>"

    def internal(self, name: str) -> str:
        """A subject the processes use among themselves (``service`` role only),
        ``<prefix>.internal.<name>``: not part of the control API."""
        return f"{self.prefix}.internal.{name}"

    def tick_consumer(self, worker: str, node: str | None = None) -> str:
        """The durable consumer shared by every process for ``worker``'s ticks;
        for a node-scoped worker, by every process of ``node``."""
        return f"tick-{worker}" if node is None else f"tick-{worker}@{node}"

    def event_consumer(self, worker: str, node: str | None = None) -> str:
        """The durable consumer shared by every process for ``worker``'s events;
        for a node-scoped worker, by every process of ``node``."""
        # "@" is in neither alphabet (worker and node names are tokens), so no
        # worker-node pair is spelt like another, and consumer names allow it.
        return f"events-{worker}" if node is None else f"events-{worker}@{node}"

    def replay_consumer(self, worker: str, node: str | None = None) -> str:
        """The durable consumer of ``worker``'s replayed messages (one per node
        for a node-scoped worker), on :attr:`replay_stream`."""
        return f"replay-{worker}" if node is None else f"replay-{worker}@{node}"
