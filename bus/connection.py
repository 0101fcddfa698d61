"""The NATS connection: streams, publishing with a bounded retry, consumers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ctrlplane.bus.codec import MAX_TICK_SIZE, encode
from ctrlplane.bus.errors import (
    BusError,
    ConsumerLimitError,
    EventTooLargeError,
    InvalidEventError,
    NotConnectedError,
    PublishError,
    ReplicasError,
)
from ctrlplane.bus.limits import BusLimits
from ctrlplane.bus.messages import DeadLetter, Event, Tick
from ctrlplane.bus.publisher import BatchPublisher
from ctrlplane.bus.subjects import Subjects, is_valid_event_type

log = structlog.get_logger("ctrlplane.bus")

# Errors after which a JetStream publish is worth trying again: the server is
# away (reconnecting) or slow, or the stream is missing (another process may
# be creating it, or will recreate it), not refusing the message.
RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)

# Answers of a JetStream that is there but busy (electing leaders, loaded):
# stream and consumer set-up is asked again (see Bus.patiently).
_SETUP_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    # A replicated stream or bucket just made answers nothing until its raft
    # group has elected a leader.
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)
SETUP_PATIENCE = timedelta(seconds=30)
"""How long stream and consumer set-up keeps asking a busy JetStream."""

MSG_ID = "Nats-Msg-Id"


def event_msg_id(event: Event) -> str:
    """The de-duplication key of a published event: ``event/<source>/<id>``,
    sent as the ``Nats-Msg-Id`` header (a public contract: README, Events).

    ``(source, id)`` identifies an event, so two sources may use one id; a
    retried publish of the same event within the stream's duplicate window
    (2 minutes) is stored once. Only the stream de-duplicates: a core NATS
    subscriber to the events subjects sees every publish, retries included;
    a JetStream consumer sees the one stored copy.
    """
    return f"event/{event.source}/{event.id}"


REASON_HEADER = "Ctrlplane-Reason"
TICKS_MAX_BYTES = 64 * 1024 * 1024
"""The tick stream's size limit: far more than the 16 newest ticks of every
worker need, and a bound on what junk published under ``tick.>`` can take."""
# Room left in a dead letter's NATS message for its headers (the reason is
# cut to 1 KiB there) and the protocol line.
_HEADER_ROOM = 4096


class Bus:
    """One process's connection to NATS and JetStream.

    Args:
        subjects: The subject and stream names to use.
        name: Client name shown by the server's monitoring.
        publish_timeout: How long one publish may keep retrying while the
            connection is away before it raises :class:`PublishError`.
        limits: Event size and stream size and age limits.
    """

    def __init__(
        self,
        subjects: Subjects | None = None,
        *,
        name: str = "ctrlplane",
        publish_timeout: timedelta = timedelta(seconds=30),
        limits: BusLimits | None = None,
    ) -> None:
        self.subjects = subjects or Subjects()
        self.limits = limits or BusLimits()
        self.name = name
        self.publish_timeout = publish_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._batches: BatchPublisher | None = None
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._closing = False

    @property
    def connected(self) -> bool:
        """Whether the bus has a live (possibly reconnecting) connection."""
        return self._nc is not None and not self._nc.is_closed

    @property
    def nc(self) -> Client:
        """The nats-py client."""
        if self._nc is None or self._nc.is_closed:
            raise NotConnectedError("use the NATS client")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context."""
        if self._js is None or self._nc is None or self._nc.is_closed:
            raise NotConnectedError("use JetStream")
        return self._js

    @property
    def max_event_size(self) -> int:
        """The largest event payload published or handled: the configured
        limit, or the server's ``max_payload`` if that is smaller."""
        return min(self.limits.max_event_size, self.nc.max_payload)

    @property
    def dead_letter_room(self) -> int:
        """How many bytes a dead letter's body may take: it must fit in one
        NATS message with its headers, whatever it copies."""
        return max(1024, self.nc.max_payload - _HEADER_ROOM)

    def peer_options(self) -> tuple[list[str], str | None]:
        """The servers (with any user and password in their URLs) and token
        this bus connected with, for a second connection of the same identity
        (the lease keeper's thread)."""
        nc = self.nc
        token = nc.options.get("token")
        return [uri.geturl() for uri in nc.servers], token if isinstance(token, str) else None

    async def connect(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout: timedelta = timedelta(seconds=10),
        randomize: bool = True,
    ) -> None:
        """Connect to NATS at ``url`` (a comma-separated list is allowed).

        The client reconnects forever once connected: a control plane outlives
        broker restarts, and with several servers it moves to another when
        its own goes away. The first connection is retried until
        ``connect_timeout``; a server that refuses the credentials ends it at
        once. Cancelling the call closes the half-made connection.

        ``randomize`` picks among the servers at random (spreading replicas
        over a cluster's nodes); ``False`` tries them in the order given, for
        a replica that should use the node on its own host while it is up.

        Raises:
            BusError: ``cannot connect to NATS at URL: reason`` (with any
                password or token in the URL hidden).
        """
        self._closing = False
        servers = [u.strip() for u in url.split(",") if u.strip()]
        total = max(connect_timeout.total_seconds(), 0.001)
        connecting = True
        last_error: Exception | None = None
        refused = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            nonlocal last_error
            if connecting:
                # nats-py retries the first connect forever when reconnecting
                # is allowed; the bound and the verdict are ours. A refusal is
                # the reason, whatever the closed socket reports after it.
                if not refused.is_set():
                    last_error = exc
                if _is_refusal(exc):
                    last_error = exc
                    refused.set()
                log.debug("nats connect attempt failed", error=str(exc) or type(exc).__name__)
                return
            log.warning("nats error", error=str(exc) or type(exc).__name__)

        async def on_disconnect() -> None:
            if not self._closing:
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")
            for callback in list(self._on_reconnect):
                await callback()

        nc = Client()
        attempt = asyncio.ensure_future(
            nc.connect(
                servers,
                name=self.name,
                token=token,
                # Per attempt (and per reconnect later); the whole first
                # connect is bounded by ``total`` below.
                connect_timeout=max(1, math.ceil(min(total, 5))),
                allow_reconnect=True,
                dont_randomize=not randomize,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works; the stub says int
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        )
        refusal = asyncio.ensure_future(refused.wait())
        connected = False
        try:
            await asyncio.wait({attempt, refusal}, timeout=total, return_when=FIRST_COMPLETED)
            connected = (
                attempt.done()
                and not attempt.cancelled()
                and attempt.exception() is None
                and not refused.is_set()
            )
        finally:
            connecting = False
            refusal.cancel()
            if not connected:
                self._closing = True  # no "disconnected" warning for this one
                attempt.cancel()
                # Bounded: a start-up that is being cancelled must not hang here.
                with contextlib.suppress(Exception):
                    await asyncio.wait({attempt}, timeout=1)
                    async with asyncio.timeout(1):
                        await nc.close()
        if not connected:
            error = last_error
            if error is None and attempt.done() and not attempt.cancelled():
                error = attempt.exception()  # type: ignore[assignment]
            if error is None:
                reason = f"no answer within {total:g}s"
            elif refused.is_set():
                reason = str(error)
            else:
                reason = f"{str(error) or type(error).__name__} (gave up after {total:g}s)"
            raise BusError(f"cannot connect to NATS at {_redact_url(url)}: {reason}")
        self._nc = nc
        self._js = nc.jetstream()
        self._batches = BatchPublisher(nc)

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` every time the connection comes back."""
        self._on_reconnect.append(callback)

    def off_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Stop calling ``callback`` on reconnects."""
        with contextlib.suppress(ValueError):
            self._on_reconnect.remove(callback)

    async def ensure_streams(
        self,
        *,
        duplicate_window: timedelta,
        events_max_age: timedelta = timedelta(days=7),
    ) -> None:
        """Create the tick, event, dead-letter and replay streams, or widen them.

        Several processes may call this at once with different settings: the
        tick stream's duplicate window only ever grows, so one process with a
        short-interval worker set never shrinks another's de-duplication.
        The events and dead-letter streams are bounded by ``limits`` in bytes
        as well as age, discarding their oldest messages past either. Every
        stream gets ``limits.stream_replicas`` replicas and admits
        ``limits.max_consumers`` consumers; an existing stream with fewer of
        either is raised to them (never lowered: another process may rely on
        them).

        Raises:
            BusError: JetStream cannot hold a stream as configured: too little
                storage for its ``max_bytes``, or more replicas than it has
                servers (the message names the setting to change).
        """
        limits = self.limits
        s = self.subjects
        window = max(duplicate_window, timedelta(minutes=2))
        ticks = StreamConfig(
            name=s.ticks_stream,
            subjects=[s.all_ticks],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=window.total_seconds(),
            # A tick nobody consumes (a worker removed everywhere) must not
            # pile up: a few per worker is all coalescing ever looks at.
            max_msgs_per_subject=16,
            discard=DiscardPolicy.OLD,
            max_age=max(timedelta(days=1), 2 * window).total_seconds(),
            # Anyone may publish under tick.<anything>: 16 per subject is no
            # bound on the disk, so bound the bytes and each tick's size
            # (ours are about 200 bytes; the server refuses a larger one).
            max_bytes=TICKS_MAX_BYTES,
            max_msg_size=MAX_TICK_SIZE,
            num_replicas=limits.stream_replicas,
            max_consumers=limits.max_consumers,
        )
        await self.patiently(lambda: self._add_or_widen(ticks), f"stream {ticks.name}")
        events = StreamConfig(
            name=s.events_stream,
            subjects=[s.all_events],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=events_max_age.total_seconds(),
            max_bytes=limits.events_max_bytes,
            discard=DiscardPolicy.OLD,
            # JetStream refuses a duplicate window longer than the age limit.
            duplicate_window=min(timedelta(minutes=2), events_max_age).total_seconds(),
            num_replicas=limits.stream_replicas,
            max_consumers=limits.max_consumers,
        )
        await self.patiently(lambda: self._add_or_widen(events), f"stream {events.name}")
        dlq = StreamConfig(
            name=s.dlq_stream,
            subjects=[s.all_dlq],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=limits.dlq_max_age.total_seconds(),
            max_bytes=limits.dlq_max_bytes,
            discard=DiscardPolicy.OLD,
            num_replicas=limits.stream_replicas,
            max_consumers=limits.max_consumers,
        )
        await self.patiently(lambda: self._add_or_widen(dlq), f"stream {dlq.name}")
        replay = StreamConfig(
            name=s.replay_stream,
            subjects=[s.all_replay],
            # Each replay is for one consumer and gone once that consumer
            # acks it; a replay waits as long as the letter it came from would.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=limits.dlq_max_age.total_seconds(),
            max_bytes=limits.dlq_max_bytes,
            duplicate_window=timedelta(minutes=2).total_seconds(),
            num_replicas=limits.stream_replicas,
            max_consumers=limits.max_consumers,
        )
        await self.patiently(lambda: self._add_or_widen(replay), f"stream {replay.name}")

    async def _add_or_widen(self, config: StreamConfig) -> None:
        """Create the stream, or bring an existing one in line with ``config``.

        The duplicate window (and the tick stream's age limit, which must
        exceed it), the replicas and the consumer limit only ever grow; the
        event stream's age limit follows the operator's latest setting, and
        so do the size limits.
        """
        assert config.name is not None
        try:
            info = await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                # Another process created it between our look and our add.
                info = await self.js.stream_info(config.name)
            except nats.js.errors.APIError as exc:
                raise stream_refusal(config, exc) from exc
        current = info.config
        window = max(current.duplicate_window or 0, config.duplicate_window)
        if config.name == self.subjects.ticks_stream:
            max_age = max(current.max_age or 0, config.max_age or 0)
        else:
            max_age = config.max_age or 0
        max_bytes = config.max_bytes if config.max_bytes is not None else current.max_bytes
        max_msg_size = config.max_msg_size or current.max_msg_size
        replicas = max(current.num_replicas or 1, config.num_replicas or 1)
        max_consumers = _wider_limit(current.max_consumers, config.max_consumers)
        if (
            window != (current.duplicate_window or 0)
            or max_age != (current.max_age or 0)
            or max_bytes != current.max_bytes
            or max_msg_size != current.max_msg_size
            or replicas != (current.num_replicas or 1)
            or max_consumers != current.max_consumers
            or config.subjects != current.subjects
        ):
            updated = StreamConfig.from_response(current.as_dict())
            updated.subjects = config.subjects  # tick.* became tick.> for node-scoped ticks
            updated.duplicate_window = window
            updated.max_age = max_age
            updated.max_bytes = max_bytes
            updated.max_msg_size = max_msg_size
            updated.num_replicas = replicas
            updated.max_consumers = max_consumers
            try:
                await self.js.update_stream(updated)
            except nats.js.errors.APIError as exc:
                raise stream_refusal(updated, exc) from exc

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Any:
        """Publish to JetStream, retrying while the connection is away.

        Retries are safe because every message we publish carries a
        ``Nats-Msg-Id``: a retry of a publish that did land is dropped by the
        stream's duplicate window instead of stored twice.
        """
        deadline = asyncio.get_running_loop().time() + self.publish_timeout.total_seconds()
        attempt = 0
        delay = 0.05
        while True:
            attempt += 1
            try:
                return await self.js.publish(subject, payload, timeout=2.0, headers=headers)
            except (*RETRYABLE, nats.js.errors.APIError) as exc:
                if isinstance(exc, nats.js.errors.APIError) and not _in_process(exc):
                    raise
                now = asyncio.get_running_loop().time()
                if now + delay > deadline:
                    raise PublishError(subject, attempt, str(exc) or type(exc).__name__) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def publish_event(self, event: Event) -> int:
        """Publish ``event`` on ``<prefix>.events.<type>``; returns its stream sequence.

        Raises:
            InvalidEventError: the type cannot be a subject (spaces, wildcards).
            EventTooLargeError: it encodes to more than :attr:`max_event_size`.
            PublishError: it did not reach the stream within ``publish_timeout``.
        """
        if not is_valid_event_type(event.type):
            raise InvalidEventError(event.type)
        payload = self._encode_event(event)
        ack = await self._publish(
            self.subjects.event(event.type), payload, {MSG_ID: event_msg_id(event)}
        )
        return int(ack.seq)

    async def publish_events(self, events: Sequence[Event], *, in_flight: int = 256) -> None:
        """Publish many events, up to ``in_flight`` of them awaiting their ack at once.

        All go out through one ack subscription (:class:`BatchPublisher`);
        any that were not acknowledged are published again one by one with
        :meth:`publish_event`'s retry (their ``Nats-Msg-Id`` keeps one that
        did land from being stored twice). The first that fails for good
        raises once the others have finished.

        Raises:
            InvalidEventError: an event type cannot be a subject; raised
                before anything is published.
            EventTooLargeError: an event is larger than :attr:`max_event_size`;
                raised before anything is published.
            PublishError: some event did not reach the stream.
        """
        for event in events:
            if not is_valid_event_type(event.type):
                raise InvalidEventError(event.type)
        if self._batches is None:
            raise NotConnectedError("publish")
        messages = [
            (self.subjects.event(e.type), self._encode_event(e), {MSG_ID: event_msg_id(e)})
            for e in events
        ]
        missed = await self._batches.publish(messages, window=in_flight)
        if not missed:
            return
        log.info("publishing events again one by one", events=len(missed))
        pending = (events[i] for i in missed)
        failures: list[BaseException] = []

        async def worker() -> None:
            for event in pending:
                try:
                    await self.publish_event(event)
                except PublishError as exc:
                    failures.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(in_flight, len(missed)))))
        if failures:
            raise failures[0]

    def _encode_event(self, event: Event) -> bytes:
        payload = encode(event)
        limit = self.max_event_size
        if len(payload) > limit:
            raise EventTooLargeError(event.type, len(payload), limit)
        return payload

    async def publish_tick(self, tick: Tick) -> bool:
        """Publish ``tick``; returns False when another process already did."""
        ack = await self._publish(
            self.subjects.tick(tick.worker, tick.node), encode(tick), {MSG_ID: tick.msg_id}
        )
        return not bool(ack.duplicate)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Keep ``letter`` on ``<prefix>.dlq.<worker>``, with the reason as a header too."""
        headers = {REASON_HEADER: letter.reason[:1024].replace("\n", " ")}
        if letter.stream_seq is not None:
            # The stream is in the id: a replayed message keeps its original
            # subject, and its sequence in the replay stream may equal that
            # of another message of the subject in the events stream.
            where = letter.subject if letter.stream is None else f"{letter.stream}/{letter.subject}"
            headers[MSG_ID] = f"dlq/{letter.worker}/{where}/{letter.stream_seq}"
        await self._publish(self.subjects.dlq(letter.worker), encode(letter), headers)

    async def publish_replay(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Keep a replayed message on ``subject`` (``<prefix>.replay.<worker>``);
        returns its sequence in the replay stream once JetStream has stored it.

        Raises:
            PublishError: it did not reach the stream within ``publish_timeout``.
        """
        ack = await self._publish(subject, payload, headers)
        return int(ack.seq)

    async def ensure_consumer(self, stream: str, config: ConsumerConfig) -> None:
        """Create the durable consumer ``config``, or update it to match.

        Raises:
            ConsumerLimitError: the stream already holds as many consumers as
                its ``max_consumers`` admits.
        """
        durable = config.durable_name
        assert durable is not None

        async def add() -> None:
            try:
                await self.js.add_consumer(stream, config)
            except nats.js.errors.APIError as exc:
                raise consumer_refusal(stream, durable, exc) from exc

        await self.patiently(add, f"consumer {durable} on {stream}")

    async def patiently(self, call: Callable[[], Awaitable[None]], what: str) -> None:
        """Run a stream or consumer set-up call again while JetStream is busy.

        Creating or updating a replicated stream or consumer waits for its
        raft group, and a cluster electing leaders (a node just died) answers
        "unavailable" or not at all for a few seconds; a loaded server can
        take longer than the API timeout too. The calls are idempotent (an
        existing stream or consumer of the same config is no error), so they
        are repeated for up to :data:`SETUP_PATIENCE`, then the error stands.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETUP_PATIENCE.total_seconds()
        delay = 0.1
        while True:
            try:
                await call()
                return
            except _SETUP_TRANSIENT as exc:
                if loop.time() + delay > deadline:
                    raise
                log.info(
                    "jetstream busy; trying again", what=what, error=str(exc) or type(exc).__name__
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Drain the connection: flush what is buffered, then close. Idempotent."""
        nc, self._nc, self._js = self._nc, None, None
        batches, self._batches = self._batches, None
        self._closing = True
        if batches is not None:
            await batches.close()
        if nc is None or nc.is_closed:
            return
        try:
            async with asyncio.timeout(5):
                await nc.drain()
        except (TimeoutError, nats.errors.Error):
            try:
                await nc.close()
            except OSError as exc:
                # nats-py writes what it buffered to a connection that is
                # already lost and raises, though the client is closed by
                # then: nobody is left to send it to, and stop must go on.
                log.info("NATS connection was lost before close", error=str(exc))


# The user part of a URL's authority: a token or a password. Up to the last
# "@" of each comma-separated URL, as a password may hold "/" or "@" unescaped.
_USERINFO_RE = re.compile(r"//[^,]*@")


def _redact_url(url: str) -> str:
    return _USERINFO_RE.sub("//***@", url)


_NO_STORAGE = 10047  # JetStream: insufficient storage resources available
_NOT_CLUSTERED = 10074  # JetStream: replicas > 1 not supported in non-clustered mode
_NO_PEERS = 10005  # JetStream: no suitable peers for placement (fewer servers than replicas)
_NO_RESOURCES = 10023  # JetStream: insufficient resources
_MAX_CONSUMERS = 10026  # JetStream: maximum consumers limit reached
_MSG_ID_IN_PROCESS = 10158  # JetStream: duplicate message id is in process


def _in_process(exc: nats.js.errors.APIError) -> bool:
    """Whether a replicated stream is still storing a message of the same id.

    Several processes publish each tick with one ``Nats-Msg-Id``; a stream
    of more than one replica answers "duplicate message id is in process"
    to all but the first while that one is being replicated, and only then
    "duplicate". Asked again a moment later, it says which: stored (a
    duplicate ack) or lost with its leader (stored now, from this publish).
    """
    return exc.err_code == _MSG_ID_IN_PROCESS


def _wider_limit(current: int | None, wanted: int | None) -> int | None:
    """The larger of two consumer limits, where ``None`` or <= 0 is the
    server's default (1,000 on nats-server 2.15), not "unlimited"."""
    if wanted is None or wanted <= 0:
        return current
    if current is None or current <= 0:
        return wanted
    return max(current, wanted)


def stream_refusal(config: StreamConfig, exc: nats.js.errors.APIError) -> Exception:
    """Say which setting to change when JetStream refuses a stream as configured."""
    if exc.err_code == _NO_STORAGE:
        return BusError(
            f"bus: JetStream cannot reserve {config.max_bytes} bytes for stream {config.name}: "
            "lower events_max_bytes / dlq_max_bytes, or give JetStream more storage "
            "(max_file_store)"
        )
    if (config.num_replicas or 1) > 1 and exc.err_code in (
        _NOT_CLUSTERED,
        _NO_PEERS,
        _NO_RESOURCES,
    ):
        return ReplicasError(config.name or "", config.num_replicas or 1, exc.description or "")
    return exc


def consumer_refusal(stream: str, durable: str, exc: Exception) -> Exception:
    """A clear error for a consumer JetStream refused because its stream is
    full of consumers; any other error as it is."""
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code == _MAX_CONSUMERS:
        return ConsumerLimitError(stream, durable)
    return exc


def _is_refusal(exc: Exception) -> bool:
    """Whether a server refused the credentials: retrying will not help."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    # nats-py reports the server's -ERR during the handshake as a plain Error.
    return isinstance(exc, nats.errors.Error) and "authoriz" in str(exc).lower()
