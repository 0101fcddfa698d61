"""Key-value buckets on JetStream: the ledger of completed slots."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ctrlplane.bus.connection import RETRYABLE, Bus, stream_refusal
from ctrlplane.bus.errors import BusError, NotConnectedError

log = structlog.get_logger("ctrlplane.bus")

SUSPECT_FOR = timedelta(minutes=1)
"""How long after a (re)connect every tick is looked up (by default; the
scheduler passes twice its longest ack_wait)."""

# The publish retry's errors, and a JetStream that is up but not ready yet
# (a key-value write is answered by the stream, after a broker restart too).
_TRANSIENT = (*RETRYABLE, nats.js.errors.ServiceUnavailableError)


class SlotCompletion(msgspec.Struct, frozen=True, kw_only=True):
    """The run that completed a slot, as the ledger keeps it.

    Enough to write the run's record again: a process killed after the
    ledger write and before its batch of run records committed loses its
    row, and whoever skips the slot's redelivered tick writes it instead.
    """

    run_id: str
    process: str
    attempt: int
    started: float
    """Epoch seconds."""
    finished: float
    outcome: str = "ok"
    error: str | None = None


_decode = msgspec.json.Decoder(SlotCompletion).decode


class LedgerError(BusError):
    """A slot's completion could not be written within its budget."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"bus: completion of {key!r} not recorded: {reason}")


class SlotLedger:
    """Which ``(worker, slot)`` pairs have run to completion, across the cluster.

    A periodic run that ends writes its slot here (create-only, acknowledged
    by the server) before its tick is acked, so a tick redelivered after the
    run ended (its process died before the ack reached NATS, or the ack was
    lost in a reconnect) is recognised and skipped instead of run again.
    Entries expire after ``ttl``, which must cover the tick stream's
    duplicate window: older slots can never be delivered again.
    """

    def __init__(self, bus: Bus, *, ttl: timedelta, suspect_for: timedelta = SUSPECT_FOR) -> None:
        self._bus = bus
        self._ttl = ttl
        self._kv: KeyValue | None = None
        self._suspect_for = suspect_for.total_seconds()
        self._suspect_until = 0.0

    def _suspect(self) -> None:
        self._suspect_until = time.monotonic() + self._suspect_for

    async def _reconnected(self) -> None:
        self._suspect()

    def suspect(self) -> bool:
        """Whether a first delivery may be a tick already run: for a while
        after this process connected or reconnected. A broker that restarts
        (all its clients reconnect) may have lost the acks it had not yet
        written, and deliver such ticks again as attempt 1; at any other time
        only a redelivery (attempt 2 and up) can be."""
        return time.monotonic() < self._suspect_until

    def close(self) -> None:
        """Stop watching reconnects."""
        self._bus.off_reconnect(self._reconnected)

    async def open(self) -> None:
        """Create the bucket, or bind to it (widening its TTL if it is shorter,
        and raising its replicas to the bus's ``stream_replicas``).

        Raises:
            ReplicasError: JetStream has fewer servers than ``stream_replicas``.
        """
        await self._bus.patiently(self._open, f"bucket {self._bus.subjects.slots_bucket}")
        self._suspect()
        self._bus.on_reconnect(self._reconnected)

    async def _open(self) -> None:
        bucket = self._bus.subjects.slots_bucket
        js = self._bus.js
        replicas = self._bus.limits.stream_replicas
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await self._create(bucket)
        else:
            info = await js.stream_info(f"KV_{bucket}")
            config = info.config
            if (
                (config.max_age or 0) < self._ttl.total_seconds()
                or not config.allow_direct
                or (config.num_replicas or 1) < replicas
            ):
                config.max_age = max(config.max_age or 0, self._ttl.total_seconds())
                config.allow_direct = True
                config.num_replicas = max(config.num_replicas or 1, replicas)
                try:
                    await js.update_stream(config)
                except nats.js.errors.APIError as exc:
                    raise stream_refusal(config, exc) from exc
                kv = await js.key_value(bucket)
        self._kv = kv

    async def _create(self, bucket: str) -> KeyValue:
        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=self._ttl.total_seconds(),
            storage=StorageType.FILE,
            # Reads served by the stream itself, not queued behind every other
            # JetStream API request: one look-up per tick.
            direct=True,
            replicas=self._bus.limits.stream_replicas,
        )
        return await create_bucket(self._bus, config)

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise NotConnectedError("use the slot ledger before open()")
        return self._kv

    async def completed(
        self, worker: str, slot: int, node: str | None = None
    ) -> SlotCompletion | None:
        """The run that completed ``worker``'s ``slot`` somewhere, if one did
        (on ``node``, for a node-scoped worker: each node has its own slots).

        A server that cannot be asked answers "none": at worst a redelivered
        tick runs again, which is what at-least-once already allows.
        """
        try:
            entry = await self._bucket.get(_key(worker, slot, node))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (*_TRANSIENT, nats.js.errors.APIError) as exc:
            log.warning("slot ledger not readable", worker=worker, slot=slot, error=str(exc))
            return None
        try:
            return _decode(entry.value or b"")
        except (msgspec.DecodeError, RecursionError, ValueError) as exc:
            # Still a completed slot, whatever else the entry fails to say.
            log.warning("slot ledger entry unreadable", worker=worker, slot=slot, error=str(exc))
            return SlotCompletion(run_id="", process="", attempt=0, started=0, finished=0)

    async def complete(
        self,
        worker: str,
        slot: int,
        run: SlotCompletion,
        *,
        within: timedelta,
        node: str | None = None,
    ) -> None:
        """Record that ``worker``'s ``slot`` (on ``node``, for a node-scoped
        worker) ran to completion, as ``run``.

        Retries while NATS is away, for at most ``within``; an entry that
        already exists counts as written.

        Raises:
            LedgerError: the write did not land within ``within``.
        """
        key = _key(worker, slot, node)
        value = msgspec.json.encode(run)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within.total_seconds()
        delay = 0.05
        while True:
            try:
                await self._bucket.create(key, value)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                return  # already recorded (a retry of ours whose answer was lost)
            except _TRANSIENT as exc:
                if loop.time() + delay > deadline:
                    raise LedgerError(key, str(exc) or type(exc).__name__) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


async def create_bucket(bus: Bus, config: KeyValueConfig) -> KeyValue:
    """Create the key-value bucket ``config`` names, or bind to it when another
    process created it first; JetStream's refusal is a :class:`BusError` that
    says what to change."""
    assert config.bucket is not None
    try:
        return await bus.js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        # Another process created it between our look and our add.
        return await bus.js.key_value(config.bucket)
    except nats.js.errors.APIError as exc:
        raise stream_refusal(
            StreamConfig(name=f"KV_{config.bucket}", num_replicas=config.replicas), exc
        ) from exc


def _key(worker: str, slot: int, node: str | None) -> str:
    # Names are tokens without dots: "gc.7" and "gc.node-a.7" never collide.
    return f"{worker}.{slot}" if node is None else f"{worker}.{node}.{slot}"
