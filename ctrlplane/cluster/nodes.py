"""Nodes: every process heartbeats into a key-value bucket; live nodes are read from it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import UTC, datetime, timedelta

import msgspec
import nats.errors
import nats.js.errors
import structlog
from msgspec import Struct
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ctrlplane.bus.connection import RETRYABLE, Bus, stream_refusal
from ctrlplane.cluster.errors import ClusterError, StoreMismatchError

log = structlog.get_logger("ctrlplane.cluster")

KEEP_FOR = timedelta(hours=1)
"""How long a silent process stays in the bucket (and in ``ctrlplane nodes``,
as dead) at least: ten node timeouts if that is longer."""

READ_WITHIN = timedelta(seconds=10)
"""How long reading the whole bucket may take when the watcher starts."""

INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server deletes a watcher's consumer nobody follows
(one left behind when the watcher is started again)."""

_TRANSIENT = (*RETRYABLE, nats.js.errors.ServiceUnavailableError, nats.js.errors.APIError)
_KEY_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


class Beat(Struct, frozen=True, kw_only=True):
    """One process's heartbeat, as the bucket keeps it.

    Attributes:
        node: The node the process belongs to.
        process: The process (``host:pid``), as in run records.
        store_id: The identity of the store the process uses.
        started: When the process joined (epoch seconds).
        stopped: Whether the process left on purpose. Its node stays live
            until ``node_timeout`` anyway, so a restart does not move the
            node's instances away.
    """

    node: str
    process: str
    store_id: str
    started: float
    stopped: bool = False


_decode_beat = msgspec.json.Decoder(Beat).decode


class ProcessView(Struct, frozen=True, kw_only=True):
    """A process of a node, as ``ctrlplane nodes`` shows it."""

    process: str
    started: datetime
    last_heartbeat: datetime
    live: bool
    stopped: bool


class NodeInfo(Struct, frozen=True, kw_only=True):
    """A node, as ``ctrlplane nodes`` shows it.

    Attributes:
        name: The node's name.
        live: Whether some process of it heartbeat within ``node_timeout``.
        last_heartbeat: The newest heartbeat of any of its processes.
        store_ids: The stores its processes use (one, in a sound cluster).
        processes: Its processes, newest heartbeat first.
        instances: Instances placed on it (filled in by the API from the store).
    """

    name: str
    live: bool
    last_heartbeat: datetime
    store_ids: list[str]
    processes: list[ProcessView]
    instances: int = 0


class NodeRegistry:
    """This process's heartbeat, and its view of the cluster's nodes.

    Every ``every`` the process writes its :class:`Beat` under its own key of
    the ``<PREFIX>_NODES`` bucket; one watcher follows the whole bucket. Ages
    are measured on the server's clock (each entry's stored time against
    that of our own latest beat), so hosts whose clocks differ still agree on
    who is live. A node is live while any of its processes heartbeat within
    ``timeout``.

    :meth:`start` returns once the bucket is read and our first beat has come
    back through the watcher, so :meth:`live` is right from then on; it refuses to join a cluster
    whose live processes use another store.

    Args:
        bus: A connected bus.
        node: This process's node.
        process: This process's id (``host:pid``).
        store_id: The identity of this process's store.
        timeout: How long a node may stay silent before it counts as dead.
        every: How often to heartbeat (default: a sixth of ``timeout``, at
            most 5 s), so several beats can be lost before a node is dead.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        node: str,
        process: str,
        store_id: str,
        timeout: timedelta,
        every: timedelta | None = None,
    ) -> None:
        self._bus = bus
        self._node = node
        self._beat = Beat(node=node, process=process, store_id=store_id, started=time.time())
        self._key = f"{node}.{_KEY_UNSAFE.sub('-', process)}"
        self._timeout = timeout
        self._every = every or min(timeout / 6, timedelta(seconds=5))
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        # The last view read: each key's beat and its age on the server's clock.
        self._seen: dict[str, tuple[Beat, datetime]] = {}
        self._now = datetime.now(UTC)
        self._read_at = time.monotonic()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._follower: asyncio.Task[None] | None = None
        self._echoed = 0
        self._echo = asyncio.Event()
        self._mismatch_logged: set[str] = set()

    @property
    def name(self) -> str:
        """The node this process belongs to."""
        return self._node

    @property
    def timeout(self) -> timedelta:
        return self._timeout

    def live(self) -> list[str]:
        """The live nodes' names, sorted; this node always, while it runs."""
        # Time passes between reads: a beat read fresh may have gone stale.
        now = self._now + timedelta(seconds=time.monotonic() - self._read_at)
        names = {self._node}
        for beat, at in self._seen.values():
            if now - at <= self._timeout:
                names.add(beat.node)
        return sorted(names)

    def nodes(self) -> list[NodeInfo]:
        """Every node in the bucket, live or not, by name."""
        now = self._now + timedelta(seconds=time.monotonic() - self._read_at)
        by_node: dict[str, list[ProcessView]] = {}
        stores: dict[str, set[str]] = {}
        for beat, at in self._seen.values():
            by_node.setdefault(beat.node, []).append(
                ProcessView(
                    process=beat.process,
                    started=datetime.fromtimestamp(beat.started, UTC),
                    last_heartbeat=at,
                    live=now - at <= self._timeout and not beat.stopped,
                    stopped=beat.stopped,
                )
            )
            stores.setdefault(beat.node, set()).add(beat.store_id)
        live = set(self.live())
        out = []
        for name, processes in sorted(by_node.items()):
            processes.sort(key=lambda p: p.last_heartbeat, reverse=True)
            out.append(
                NodeInfo(
                    name=name,
                    live=name in live,
                    last_heartbeat=processes[0].last_heartbeat,
                    store_ids=sorted(stores[name]),
                    processes=processes,
                )
            )
        return out

    async def start(self) -> None:
        """Open the bucket, read the cluster, heartbeat once, and keep at it.

        Raises:
            StoreMismatchError: a live process of the cluster uses another store.
            ClusterError: the bucket cannot be used.
        """
        try:
            self._kv = await self._open()
            # A bucket just made with replicas answers nothing until its raft
            # group has a leader: the first reads and writes wait for it too.
            await self._bus.patiently(self._watch, f"watch of {self._bus.subjects.nodes_bucket}")
            await self._bus.patiently(self._heartbeat, f"heartbeat of {self._node}")
        except _TRANSIENT as exc:
            await self._unwatch()
            raise ClusterError(f"the nodes bucket is not usable: {exc}") from exc
        for beat, at in self._seen.values():
            if beat.store_id != self._beat.store_id and self._now - at <= self._timeout:
                # Not part of this cluster after all: take our beat back.
                with contextlib.suppress(*_TRANSIENT, nats.errors.Error):
                    await self._kv.delete(self._key)
                await self._unwatch()
                raise StoreMismatchError(
                    node=beat.node,
                    process=beat.process,
                    theirs=beat.store_id,
                    ours=self._beat.store_id,
                )
        self._task = asyncio.create_task(self._loop(), name="node-heartbeat")
        log.info("node joined", node=self._node, live=self.live())

    async def stop(self) -> None:
        """Stop heartbeating; the last beat says the process left on purpose."""
        task, self._task = self._task, None
        if task is not None:
            await _cancelled(task)
            if self._kv is not None:
                with contextlib.suppress(*_TRANSIENT, nats.errors.Error):
                    async with asyncio.timeout(2):
                        last = msgspec.structs.replace(self._beat, stopped=True)
                        await self._kv.put(self._key, msgspec.json.encode(last))
        await self._unwatch()

    async def _open(self) -> KeyValue:
        opened: list[KeyValue] = []

        async def bind() -> None:
            opened.append(await self._bind())

        # A JetStream cluster electing leaders answers "unavailable" for a while.
        await self._bus.patiently(bind, f"bucket {self._bus.subjects.nodes_bucket}")
        return opened[-1]

    async def _bind(self) -> KeyValue:
        """Create the bucket, or bind to it (widening its age limit and
        raising its replicas to the bus's ``stream_replicas``)."""
        bucket = self._bus.subjects.nodes_bucket
        keep = max(KEEP_FOR, self._timeout * 10).total_seconds()
        replicas = self._bus.limits.stream_replicas
        js = self._bus.js
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            wanted = KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=keep,
                storage=StorageType.FILE,
                direct=True,
                replicas=replicas,
            )
            try:
                return await js.create_key_value(wanted)
            except nats.js.errors.BadRequestError:
                # Another process created it between our look and our add.
                return await js.key_value(bucket)
            except nats.js.errors.APIError as exc:
                raise stream_refusal(
                    StreamConfig(name=f"KV_{bucket}", num_replicas=replicas), exc
                ) from exc
        info = await js.stream_info(f"KV_{bucket}")
        config = info.config
        if (config.max_age or 0) < keep or (config.num_replicas or 1) < replicas:
            config.max_age = max(config.max_age or 0, keep)
            config.num_replicas = max(config.num_replicas or 1, replicas)
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as exc:
                raise stream_refusal(config, exc) from exc
        return kv

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every.total_seconds())
            try:
                await self._heartbeat()
            except (*_TRANSIENT, nats.errors.Error) as exc:
                # NATS away: the view ages (live() measures from our last
                # beat seen) and the next beat tries again.
                log.warning("heartbeat failed", node=self._node, error=str(exc))
                continue
            self._check_stores()

    async def _heartbeat(self) -> None:
        """Write our beat, and see it come back through the watcher.

        Our own beat is the watcher's check: if it does not come back within
        a beat interval, the watcher has stopped following the bucket (its
        consumer was lost in a server restart, say), so it is started again.
        """
        assert self._kv is not None
        revision = await self._kv.put(self._key, msgspec.json.encode(self._beat))
        try:
            async with asyncio.timeout(max(self._every.total_seconds(), 1.0)):
                while self._echoed < revision:
                    self._echo.clear()
                    await self._echo.wait()
        except TimeoutError:
            log.info("node watcher restarted", node=self._node)
            await self._watch()

    async def _watch(self) -> None:
        """(Re)start the watcher: read the bucket to its end, then follow it."""
        assert self._kv is not None
        await self._unwatch()
        watcher = await self._kv.watchall(inactive_threshold=INACTIVE_THRESHOLD)
        seen: dict[str, tuple[Beat, datetime]] = {}
        try:
            async with asyncio.timeout(READ_WITHIN.total_seconds()):
                async for entry in watcher:
                    if entry is None:
                        break  # the end of what the bucket held
                    self._apply(entry, seen)
        except BaseException:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
            raise
        self._seen = seen
        self._watcher = watcher
        self._follower = asyncio.create_task(self._follow(watcher), name="node-watcher")

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry, self._seen)

    def _apply(self, entry: KeyValue.Entry, seen: dict[str, tuple[Beat, datetime]]) -> None:
        if entry.operation is not None:
            seen.pop(entry.key, None)  # deleted, purged or expired
            return
        at = _stored_at(entry.created)
        if at is None:
            return
        try:
            beat = _decode_beat(entry.value or b"")
        except (msgspec.DecodeError, RecursionError, ValueError):
            log.warning("unreadable heartbeat ignored", key=entry.key)
            return
        seen[entry.key] = (beat, at)
        if entry.key == self._key:
            # Ages are measured against our own latest beat, on the server's clock.
            self._now = at
            self._read_at = time.monotonic()
            self._echoed = max(self._echoed, entry.revision or 0)
            self._echo.set()

    async def _unwatch(self) -> None:
        follower, self._follower = self._follower, None
        watcher, self._watcher = self._watcher, None
        if follower is not None:
            await _cancelled(follower)
        if watcher is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def _check_stores(self) -> None:
        ours = self._beat.store_id
        for beat, _at in self._seen.values():
            if beat.store_id != ours and beat.process not in self._mismatch_logged:
                self._mismatch_logged.add(beat.process)
                log.error(
                    "a process of this cluster uses another store",
                    node=beat.node,
                    process=beat.process,
                    theirs=beat.store_id,
                    ours=ours,
                )


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended.

    On Python 3.11 ``asyncio.wait_for`` (which nats-py uses inside its
    calls) swallows a cancellation that lands in the loop iteration where
    what it waits for completes, so one ``cancel()`` may not end the task:
    cancel again until it has.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.warning("node task ended with an error", error=repr(task.exception()))


def _stored_at(created: object) -> datetime | None:
    """When the server stored an entry. nats-py gives the message's metadata
    timestamp (a datetime) although it annotates the field as an int."""
    if isinstance(created, datetime):
        return created if created.tzinfo is not None else created.replace(tzinfo=UTC)
    if isinstance(created, int | float) and created > 0:
        return datetime.fromtimestamp(created / 1e9 if created > 1e12 else created, UTC)
    return None
