"""The durable consumers an actor pulls from: how each is configured."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from msgspec import Struct
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane.actors.errors import TooManyConsumersError
from ctrlplane.actors.info import WorkerKind
from ctrlplane.actors.spec import WorkerSpec
from ctrlplane.bus.subjects import Subjects

MIN_ACK_WAIT = timedelta(seconds=5)
MAX_ACK_WAIT = timedelta(seconds=30)
# Deliveries of an event beyond its max_attempts allowed for runs that never
# settled (a process died or stopped mid-run); the consumer's max_deliver.
UNSETTLED_MARGIN = 3


def ack_wait_for(spec: WorkerSpec) -> timedelta:
    """How long JetStream waits for an ack before handing the message to another process.

    In-progress acks are sent every third of it, from a thread of their own,
    while a message is held, so it bounds how long a process that died (or
    whose whole interpreter stalled) holds a message, not how long a run may
    take. At least 5 s, so a loaded machine's scheduling hiccups never hand
    away a message whose run goes on.
    """
    return min(max(spec.timeout, MIN_ACK_WAIT), MAX_ACK_WAIT)


def tick_consumer(spec: WorkerSpec, s: Subjects) -> ConsumerConfig:
    """The worker's tick consumer, shared by every process (of its node, for a
    node-scoped worker: each node has its own, so runs never overlap on a
    node, and a tick held by a dead process goes to another of that node)."""
    return ConsumerConfig(
        durable_name=s.tick_consumer(spec.name, spec.node),
        filter_subject=s.tick(spec.name, spec.node),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        # One tick out at a time across every process: no
        # overlapping runs of one worker anywhere.
        max_ack_pending=1,
        ack_wait=ack_wait_for(spec).total_seconds(),
        max_deliver=-1,
    )


def event_consumer(spec: WorkerSpec, s: Subjects) -> ConsumerConfig:
    """The worker's consumer of the events it subscribes to (one per node for
    a node-scoped worker, so each node handles every event once)."""
    filters = [s.event(p) for p in spec.subscriptions]
    return ConsumerConfig(
        durable_name=s.event_consumer(spec.name, spec.node),
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        ack_policy=AckPolicy.EXPLICIT,
        # A new worker reacts to what happens from now on, not to
        # the whole retained history.
        deliver_policy=DeliverPolicy.NEW,
        # Room for the prefetch window plus the messages whose runs
        # ended and whose records are not yet committed (acks wait
        # for the batch that holds them).
        max_ack_pending=max(4096, 4 * spec.prefetch),
        ack_wait=ack_wait_for(spec).total_seconds(),
        # Our own max_attempts dead-letters first; the last delivery
        # of a message that keeps killing whole processes is
        # dead-lettered unrun (see Actor._handle), never dropped unseen.
        max_deliver=spec.max_attempts + UNSETTLED_MARGIN,
    )


def replay_consumer(spec: WorkerSpec, s: Subjects) -> ConsumerConfig:
    """The worker's consumer of its replayed dead letters (``dlq replay``),
    on the replay stream: only this worker's (and node's) replays, so a
    replay reaches the worker that gave up on the message and no other."""
    return ConsumerConfig(
        durable_name=s.replay_consumer(spec.name, spec.node),
        filter_subject=s.replay(spec.name, spec.node),
        ack_policy=AckPolicy.EXPLICIT,
        # A work queue: whatever waits in it is for this consumer, including
        # replays kept before the worker's first start with replays.
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=max(4096, 4 * spec.prefetch),
        ack_wait=ack_wait_for(spec).total_seconds(),
        # A replay gets max_attempts tries, as the event did, and the same
        # margin for runs that never settled.
        max_deliver=spec.max_attempts + UNSETTLED_MARGIN,
    )


class ConsumerCount(Struct, frozen=True, kw_only=True):
    """How many durable consumers a set of workers needs on each stream."""

    ticks: int
    events: int
    replays: int = 0


def consumers_needed(specs: Iterable[WorkerSpec]) -> ConsumerCount:
    """The consumers ``specs`` need: one tick consumer per periodic worker and
    one event consumer (and one replay consumer) per worker that subscribes
    to events.

    Replicas running the same workers share these consumers, so this is the
    count for one subject prefix, whatever the number of processes. A
    node-scoped worker has a consumer per node, and each node adds its own:
    it is counted once here (this node's), and a node that joins a stream
    already at its limit is refused by the server when it creates its
    consumer, with an error that names ``max_consumers`` too.
    """
    ticks = events = 0
    for spec in specs:
        if spec.kind is WorkerKind.PERIODIC:
            ticks += 1
        if spec.subscriptions:
            events += 1
    return ConsumerCount(ticks=ticks, events=events, replays=events)


def check_consumers(count: ConsumerCount, *, limit: int, subjects: Subjects) -> None:
    """Refuse a worker set whose consumers would not fit in a stream's limit.

    Checked before anything is created, so that a process fails at start with
    the setting to change rather than part-way, on the consumer after the
    limit, with the server's "maximum consumers limit reached".

    Raises:
        TooManyConsumersError: ``count`` exceeds ``limit`` on some stream.
    """
    for stream, needed in (
        (subjects.ticks_stream, count.ticks),
        (subjects.events_stream, count.events),
        (subjects.replay_stream, count.replays),
    ):
        if needed > limit:
            raise TooManyConsumersError(stream, needed, limit)
