"""The ``describe`` endpoint: one instance in full, from the store and the event stream.

Events are not indexed by instance: their subject is ``<prefix>.events.<type>``
and the instance is inside the payload. So the newest events are read
backwards from the end of the stream, a window at a time, and at most
:data:`SCAN_MAX` of them are looked at: an instance quiet for longer than
that shows fewer events than asked for (``ctrlplane events --instance``
reads the whole stream).
"""

from __future__ import annotations

import contextlib
import difflib
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from ctrlplane.api.domain import check_view
from ctrlplane.api.errors import NotFoundError, UnavailableError
from ctrlplane.api.messages import DescribeReply, DescribeRequest
from ctrlplane.bus.codec import decode_event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import DecodeError
from ctrlplane.bus.messages import Event
from ctrlplane.bus.reader import stream_reader
from ctrlplane.store.db import Store
from ctrlplane.store.health import HealthStatus, worst
from ctrlplane.store.instances import Instance, InstanceState

__all__ = [
    "SCAN_MAX",
    "SCAN_WINDOW",
    "describe_instance",
    "process_start",
    "recent_events",
]

SCAN_WINDOW = 1000
"""Events read per step back from the end of the stream."""
SCAN_MAX = 10_000
"""The most events one ``describe`` looks at."""
FETCH_BATCH = 256
FETCH_WAIT = 2.0
"""Seconds one fetch waits; a fetch that times out ends that window's read."""

_EPOCH = datetime.fromtimestamp(0, UTC)


async def describe_instance(
    bus: Bus, store: Store, request: DescribeRequest, *, node: str | None = None
) -> DescribeReply:
    """``request.instance`` (name or id) in full, as the process on ``node``
    (None: a control plane on its own) sees it.

    Raises:
        NotFoundError: no such instance (naming the closest name, if one is close).
    """
    instance = await store.instances.find(request.instance)
    if instance is None:
        names = [i.name for i in await store.instances.all()]
        close = difflib.get_close_matches(request.instance, names, n=1)
        hint = f": did you mean {close[0]!r}?" if close else ""
        raise NotFoundError(f"no instance {request.instance!r}{hint}")
    now = datetime.now(UTC)
    states = await store.health.states(instance.id)
    restarts = await store.instances.restarts_since(instance.id, _EPOCH)
    deployments = await store.deployments.list(instance_id=instance.id, limit=1)
    here = node is None or instance.node is None or instance.node == node
    pid, started = process_start(instance, here=here)
    return DescribeReply(
        id=instance.id,
        name=instance.name,
        provider=instance.provider,
        spec=instance.spec,
        spec_hash=instance.spec_hash,
        desired=instance.desired,
        state=instance.state,
        state_error=instance.state_error,
        node=instance.node,
        handle=instance.handle,
        pid=pid,
        started=started,
        uptime=None if started is None else max(now - started, timedelta(0)),
        restarts=len(restarts),
        last_restart=restarts[-1] if restarts else None,
        created=instance.created,
        updated=instance.updated,
        health=worst([s.status for s in states]) if states else HealthStatus.UNKNOWN,
        checks=[check_view(instance, s) for s in states],
        deployment=deployments[0] if deployments else None,
        events=await recent_events(
            bus, name=instance.name, instance_id=instance.id, limit=request.events
        ),
    )


def process_start(instance: Instance, *, here: bool) -> tuple[int | None, datetime | None]:
    """The pid in a ``process`` instance's handle (``<pid>:<start>``), and when
    that process started; Nones for other providers.

    The start is known only on the host that runs the process (``here``: it
    is placed on the answering process's node, or not placed at all), and
    only while that very process runs: it is read from the live process, so
    uptime is the process's own, not the record's.
    """
    if instance.provider != "process" or instance.handle is None:
        return None, None
    pid_text = instance.handle.partition(":")[0]
    if not pid_text.isdigit():
        return None, None
    if not here or instance.state is not InstanceState.RUNNING:
        return int(pid_text), None
    from ctrlplane.providers.process import started_at

    return int(pid_text), started_at(instance.handle)


async def recent_events(bus: Bus, *, name: str, instance_id: str, limit: int) -> list[Event]:
    """The newest ``limit`` events about the instance (subject ``name`` or
    instance id ``instance_id``), newest first, among the newest
    :data:`SCAN_MAX` events of the stream.

    Raises:
        UnavailableError: there is no event stream on this NATS.
    """
    if limit <= 0:
        return []
    s = bus.subjects
    try:
        info = await bus.js.stream_info(s.events_stream)
    except nats.js.errors.NotFoundError:
        raise UnavailableError(f"no event stream {s.events_stream} on this NATS") from None
    if not info.state.messages:
        return []
    first, end = info.state.first_seq, info.state.last_seq
    found: list[Event] = []
    scanned = 0
    while end >= first and len(found) < limit and scanned < SCAN_MAX:
        start = max(first, end - SCAN_WINDOW + 1)
        window = await _read(bus, start, end)
        found.extend(
            ev for ev in reversed(window) if ev.subject == name or ev.instance_id == instance_id
        )
        scanned += end - start + 1
        end = start - 1
    return found[:limit]


async def _read(bus: Bus, start: int, end: int) -> list[Event]:
    """The events at stream sequences ``start`` to ``end``, oldest first; what
    does not decode is skipped (anyone allowed may publish there)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    out: list[Event] = []
    async with stream_reader(bus, bus.subjects.events_stream, config) as (_, sub):
        left = end - start + 1
        while left > 0:
            try:
                msgs = await sub.fetch(min(FETCH_BATCH, left), timeout=FETCH_WAIT)
            except TimeoutError:  # nats-py's TimeoutError derives from the builtin
                break
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream > end:
                    left = 0
                    break
                left = end - meta.sequence.stream
                with contextlib.suppress(DecodeError):
                    out.append(decode_event(msg.data, msg.subject))
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    return out
