"""Requests and replies of the control API (``<prefix>.api.v1.<endpoint>``).

Requests forbid unknown fields, so a typo is refused rather than ignored;
replies may gain fields within a version. Durations are ``timedelta`` here
and seconds on the wire (:mod:`ctrlplane.api.wire`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from msgspec import Meta, Struct, field

from ctrlplane.actors.control import WorkersReply, WorkersRequest
from ctrlplane.bus.messages import DeadLetter, Event
from ctrlplane.bus.subjects import is_valid_token
from ctrlplane.cluster.nodes import NodeInfo
from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.inventory import ApplyResult
from ctrlplane.limits import MAX_LIMIT, MAX_SINCE
from ctrlplane.plan import ApplyPlan
from ctrlplane.store.certs import DomainSync
from ctrlplane.store.deployments import Deployment
from ctrlplane.store.health import HealthStatus
from ctrlplane.store.instances import DesiredState, InstanceSpec, InstanceState
from ctrlplane.store.runs import Outcome, Trigger
from ctrlplane.store.telemetry import Metric, ResourceSnapshot

__all__ = [
    "ApplyReply",
    "ApplyRequest",
    "CertView",
    "CertsReply",
    "CertsRequest",
    "CheckView",
    "DeadLetterView",
    "DeploymentsReply",
    "DeploymentsRequest",
    "DescribeReply",
    "DescribeRequest",
    "DlqListReply",
    "DlqListRequest",
    "DlqPurgeReply",
    "DlqPurgeRequest",
    "DlqReplayReply",
    "DlqReplayRequest",
    "DlqReplaySkipped",
    "DlqShowReply",
    "DlqShowRequest",
    "HealthReply",
    "HealthRequest",
    "InstanceView",
    "InstancesReply",
    "InstancesRequest",
    "NodesReply",
    "NodesRequest",
    "RunView",
    "RunsReply",
    "RunsRequest",
    "TelemetryReply",
    "TelemetryRequest",
    "WorkerControlReply",
    "WorkerControlRequest",
    "WorkerRunReply",
    "WorkerRunRequest",
    "WorkersReply",
    "WorkersRequest",
]


class ApplyRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Make the recorded instances exactly ``instances``.

    Attributes:
        instances: Every instance, as ``[[instances]]`` tables declare them.
        domains: Every domain; absent leaves the recorded domains as they are.
        dry_run: Change nothing; answer what would change (the reply's ``plan``).
    """

    instances: list[InstanceDecl]
    domains: list[DomainDecl] | None = None
    dry_run: bool = False


class ApplyReply(Struct, frozen=True, kw_only=True):
    """What apply changed: instances by name, and domains when they were given.

    For a ``dry_run``, what it would change, and ``plan`` (only then present):
    each instance's and domain's action and the fields that differ.
    """

    result: ApplyResult
    domains: DomainSync | None = None
    plan: ApplyPlan | None = None


class CertsRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every domain and its current certificate: no parameters."""


class CertView(Struct, frozen=True, kw_only=True):
    """A domain and its current certificate, as ``ctrlplane certs`` shows them."""

    hostname: str
    instance: str
    issuer: str
    auto_renew: bool
    serial: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    time_left: timedelta | None = None
    """Until ``not_after``, from when the answer was made (negative once expired)."""
    renew_at: datetime | None = None
    """When the CertRenewer renews it (jitter included)."""
    cert_path: str | None = None
    failures: int
    next_attempt: datetime | None = None
    last_error: str | None = None


class CertsReply(Struct, frozen=True, kw_only=True):
    certs: list[CertView] = field(default_factory=list)


class HealthRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every check of every instance: no parameters."""


class CheckView(Struct, frozen=True, kw_only=True):
    """A check as ``ctrlplane health`` shows it."""

    instance: str
    instance_id: str
    check: str
    type: str
    status: HealthStatus
    last_checked: datetime | None = None
    last_message: str | None = None
    last_latency: timedelta | None = None
    changed: datetime | None = None
    consecutive_passes: int
    consecutive_failures: int


class HealthReply(Struct, frozen=True, kw_only=True):
    checks: list[CheckView] = field(default_factory=list)


class InstancesRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every recorded instance: no parameters."""


class InstanceView(Struct, frozen=True, kw_only=True):
    """An instance as ``ctrlplane instances`` shows it."""

    id: str
    name: str
    provider: str
    desired: DesiredState
    state: InstanceState
    health: HealthStatus
    handle: str | None = None
    state_error: str | None = None
    command: list[str]
    updated: datetime
    node: str | None = None
    """The node it is placed on (host-bound providers); null when not placed."""


class InstancesReply(Struct, frozen=True, kw_only=True):
    instances: list[InstanceView] = field(default_factory=list)


class DeploymentsRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``instance``: one instance's deployments (name or id), or absent for all;
    the newest ``limit`` of them (1 to 10000)."""

    instance: str | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        # A ValueError here is a decode failure (msgspec's ValidationError): the
        # store would otherwise fail on an integer SQLite cannot hold.
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {self.limit}")


class DeploymentsReply(Struct, frozen=True, kw_only=True):
    deployments: list[Deployment] = field(default_factory=list)


class TelemetryRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One instance's (name or id) telemetry: metrics collected in the last
    ``since`` seconds (0 to 36500 days)."""

    instance: str
    since: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.since <= MAX_SINCE:
            raise ValueError(f"since must be between 0s and {MAX_SINCE.days}d")


class TelemetryReply(Struct, frozen=True, kw_only=True):
    """The newest snapshot and the newest value of each series (name and labels)."""

    instance: str
    instance_id: str
    snapshot: ResourceSnapshot | None = None
    metrics: list[Metric] = field(default_factory=list)


class NodesRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The cluster's nodes: no parameters."""


class NodesReply(Struct, frozen=True, kw_only=True):
    """The cluster's nodes, as the answering process sees them.

    Attributes:
        node: The answering process's node.
        store_id: The identity of the answering process's store.
        nodes: Every node heard from lately, live or not.
    """

    node: str
    store_id: str
    nodes: list[NodeInfo] = field(default_factory=list)


def _check_worker(worker: str | None) -> None:
    # It becomes a subject token: a dot or a wildcard would widen the filter.
    if worker is not None and not is_valid_token(worker):
        raise ValueError(f"{worker!r} is not a worker name")


def _check_limit(limit: int) -> None:
    # A ValueError in __post_init__ is a decode failure (a 400), not a store error.
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


class RunsRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The run history: runs started in the last ``since`` seconds (0 to 36500
    days), of one ``worker`` or all, ending in ``outcome`` or any; the newest
    ``limit`` of them (1 to 10000)."""

    worker: str | None = None
    since: timedelta = timedelta(hours=1)
    outcome: Outcome | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.since <= MAX_SINCE:
            raise ValueError(f"since must be between 0s and {MAX_SINCE.days}d")
        _check_limit(self.limit)


class RunView(Struct, frozen=True, kw_only=True):
    """One run of a worker, as ``ctrlplane runs`` shows it.

    Attributes:
        id: The run's id.
        worker: The worker that ran.
        process: The process that ran it (``host:pid``).
        trigger: What started it: a tick, an event or the one-shot start.
        ref: What triggered it: the event's id or the tick's slot, when known.
        attempt: The delivery it was (1 the first time).
        started: When it started.
        finished: When it ended; absent while it runs.
        duration: How long it took; absent while it runs.
        outcome: How it ended.
        error: What it raised, when it failed.
    """

    id: str
    worker: str
    process: str
    trigger: Trigger
    ref: str | None = None
    attempt: int
    started: datetime
    finished: datetime | None = None
    duration: timedelta | None = None
    outcome: Outcome
    error: str | None = None


class RunsReply(Struct, frozen=True, kw_only=True):
    """The runs asked for, newest first."""

    runs: list[RunView] = field(default_factory=list)


class DlqListRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The dead letters of one ``worker`` or all; the newest ``limit`` of them (1 to 10000)."""

    worker: str | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        _check_worker(self.worker)
        _check_limit(self.limit)


class DeadLetterView(Struct, frozen=True, kw_only=True):
    """A dead letter without its payload, as ``ctrlplane dlq list`` shows it.

    Attributes:
        id: Its sequence in the dead-letter stream: what ``dlq_show`` takes.
        worker: The worker that gave up on the message.
        subject: The subject the message arrived on.
        reason: Why it was dead-lettered, whole.
        attempts: How many deliveries were made.
        time: When it was dead-lettered.
        size: The size of the original payload in bytes, when known.
        replay_of: When the message was a replay (``dlq_replay``) that failed
            again, the id of the letter it replayed.
    """

    id: int
    worker: str
    subject: str
    reason: str
    attempts: int
    time: datetime
    size: int | None = None
    replay_of: int | None = None


class DlqListReply(Struct, frozen=True, kw_only=True):
    """The dead letters asked for, newest first."""

    letters: list[DeadLetterView] = field(default_factory=list)


class DlqShowRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One dead letter by ``id``, its sequence in the dead-letter stream."""

    id: int


class DlqShowReply(Struct, frozen=True, kw_only=True):
    """A whole dead letter, payload included, and its ``id``."""

    id: int
    letter: DeadLetter


class DlqPurgeRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Remove the dead letters of one ``worker``, or all of them when absent."""

    worker: str | None = None

    def __post_init__(self) -> None:
        _check_worker(self.worker)


class DlqPurgeReply(Struct, frozen=True, kw_only=True):
    """How many dead letters were removed."""

    purged: int


Requester = Annotated[str, Meta(min_length=1, max_length=200)]
"""Who asks for a change (``user@host`` from the CLI): kept with a pause, logged."""


class WorkerControlRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Pause or resume ``worker`` in the whole cluster; ``by`` says who asks."""

    worker: str
    by: Requester | None = None

    def __post_init__(self) -> None:
        _check_worker(self.worker)


class WorkerControlReply(Struct, frozen=True, kw_only=True):
    """A worker's state after ``worker_pause`` or ``worker_resume``.

    Attributes:
        worker: The worker.
        paused: Whether it is paused now.
        changed: False when it already was in that state (nothing was written).
        by: Who set that state, when someone did.
        at: When that state was set, when someone did.
    """

    worker: str
    paused: bool
    changed: bool
    by: str | None = None
    at: datetime | None = None


class WorkerRunRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One extra run of periodic ``worker`` now; for a node-scoped worker, on
    ``node`` (every live node when absent). ``by`` says who asks."""

    worker: str
    node: str | None = None
    by: Requester | None = None

    def __post_init__(self) -> None:
        _check_worker(self.worker)
        if self.node is not None and not is_valid_token(self.node):
            raise ValueError(f"{self.node!r} is not a node name")


class WorkerRunReply(Struct, frozen=True, kw_only=True):
    """The runs requested: each runs once the worker's current run (if any) ends.

    Attributes:
        worker: The worker.
        refs: Each request's reference, the ``ref`` of its run in ``runs``.
        nodes: The nodes asked, for a node-scoped worker (absent otherwise).
    """

    worker: str
    refs: list[str] = field(default_factory=list)
    nodes: list[str] | None = None


class DlqReplayRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Send dead letters back to the worker that gave up on them: the letter
    ``id``, or with ``all`` every letter of ``worker`` (one of the two forms)."""

    id: int | None = None
    worker: str | None = None
    every: bool = field(default=False, name="all")

    def __post_init__(self) -> None:
        _check_worker(self.worker)
        if self.id is not None:
            if self.id < 1:
                raise ValueError(f"no dead letter {self.id}: ids start at 1")
            if self.worker is not None or self.every:
                raise ValueError("give an id, or a worker with all, not both")
        elif self.worker is None:
            raise ValueError("give the id of a dead letter, or a worker with all")
        elif not self.every:
            # One worker's letters may be many: replaying them all is said
            # explicitly, never implied by naming the worker.
            raise ValueError(f"replaying every dead letter of {self.worker} needs all: true")


class DlqReplaySkipped(Struct, frozen=True, kw_only=True):
    """A dead letter that was not replayed, and why; it is kept."""

    id: int
    reason: str


class DlqReplayReply(Struct, frozen=True, kw_only=True):
    """What a replay did.

    Attributes:
        replayed: How many letters were sent back to their worker (each is
            removed from the dead letters once its replay is stored).
        ids: Their ids, oldest first.
        skipped: Letters of the worker that cannot be replayed (a tick, a
            payload kept only in part), kept as they were.
        left: Letters of the worker past this request's batch, still kept:
            ask again to replay them.
    """

    replayed: int
    ids: list[int] = field(default_factory=list)
    skipped: list[DlqReplaySkipped] = field(default_factory=list)
    left: int = 0


MAX_DESCRIBE_EVENTS = 100
"""The most recent events ``describe`` answers with."""


class DescribeRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One instance (name or id) in full, with its newest ``events`` events (0 to 100)."""

    instance: str
    events: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.events <= MAX_DESCRIBE_EVENTS:
            raise ValueError(f"events must be between 0 and {MAX_DESCRIBE_EVENTS}")


class DescribeReply(Struct, frozen=True, kw_only=True):
    """One instance as ``ctrlplane describe instance`` shows it.

    Attributes:
        id: Its id, kept across spec changes.
        name: Its name.
        provider: Who runs it.
        spec: Every field of its desired spec, defaults included.
        spec_hash: The digest of ``spec`` (a new one means a new deployment).
        desired: What the operator wants.
        state: What was last recorded.
        state_error: Why it is ``failed``, when it is.
        node: The node it is placed on, when placed.
        handle: The provider's handle (a process: ``pid:start``).
        pid: The process id in a ``process`` instance's handle.
        started: When that process started, read from the live process: only
            while it runs, and only when the answering process is on the
            instance's node (a control plane on its own always is).
        uptime: How long it has run, from ``started`` to the answer.
        restarts: Restarts by the remediator since the instance was created or
            its declaration last changed (the crash-loop back-off's count;
            an operator's change resets it).
        last_restart: The newest of those restarts.
        created: When it was first recorded.
        updated: When its record last changed.
        health: The worst status of its checks (``unknown`` with none).
        checks: Its checks and their last results.
        deployment: Its newest deployment, if any.
        events: Its newest events (subject its name, or its id), newest first,
            from the newest part of the event stream.
    """

    id: str
    name: str
    provider: str
    spec: InstanceSpec
    spec_hash: str
    desired: DesiredState
    state: InstanceState
    state_error: str | None = None
    node: str | None = None
    handle: str | None = None
    pid: int | None = None
    started: datetime | None = None
    uptime: timedelta | None = None
    restarts: int
    last_restart: datetime | None = None
    created: datetime
    updated: datetime
    health: HealthStatus
    checks: list[CheckView] = field(default_factory=list)
    deployment: Deployment | None = None
    events: list[Event] = field(default_factory=list)
