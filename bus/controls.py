"""Worker controls: which workers are paused, in a key-value bucket every process
follows, and the run-now requests that travel beside a worker's ticks.

A pause is kept in ``<PREFIX>_CONTROLS`` under the worker's name, so it holds
across the cluster and across restarts: each process reads the bucket at start
and watches it after, and sees a change within a round trip. A run-now request
is a message on the worker's tick subject, marked with :data:`RUN_HEADER` and
its own de-duplication id, so it reaches the worker through its tick consumer:
one message out at a time, never overlapping a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
import nats.errors
import nats.js.errors
import structlog
from msgspec import Meta, Struct
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ctrlplane.bus.codec import decode
from ctrlplane.bus.connection import MSG_ID, RETRYABLE, Bus
from ctrlplane.bus.errors import BusError, DecodeError, NotConnectedError
from ctrlplane.bus.kv import create_bucket

__all__ = [
    "RUN_HEADER",
    "ControlError",
    "RunRequest",
    "WorkerControl",
    "WorkerControls",
    "decode_run_request",
    "new_run_request",
    "pause_control",
    "publish_run_request",
]

log = structlog.get_logger("ctrlplane.bus")

RUN_HEADER = "Ctrlplane-Run"
"""The header that marks a message on a tick subject as a run-now request."""

READY_WAIT = timedelta(seconds=10)
"""How long :meth:`WorkerControls.open` waits for the bucket's current entries."""

_WATCH_BACKOFF = (0.2, 5.0)

Who = Annotated[str, Meta(max_length=200)]


class WorkerControl(Struct, frozen=True, kw_only=True):
    """A worker's controls as the bucket keeps them (one entry per worker name).

    Attributes:
        paused: Whether the worker is paused everywhere in the cluster.
        by: Who last changed it (``user@host`` from the CLI).
        at: When it was changed.
    """

    paused: bool
    by: Who
    at: datetime


class RunRequest(Struct, frozen=True, kw_only=True):
    """A request for one extra run of ``worker`` now (on ``node``, for a node-scoped one).

    Attributes:
        worker: The periodic worker to run.
        id: Unique per request; with the worker it is the message's
            de-duplication id and the run's ``ref`` in the run history.
        by: Who asked.
        at: When it was asked.
        node: The node whose run it is, for a node-scoped worker.
    """

    worker: str
    id: str
    by: Who
    at: datetime
    node: str | None = None

    @property
    def ref(self) -> str:
        """``gc/run/<id>``: its de-duplication id, and the run's ``ref``."""
        if self.node is None:
            return f"{self.worker}/run/{self.id}"
        return f"{self.worker}/{self.node}/run/{self.id}"


def new_run_request(worker: str, by: str, node: str | None = None) -> RunRequest:
    """A fresh :class:`RunRequest` with a random id."""
    return RunRequest(worker=worker, id=secrets.token_hex(6), by=by, at=_now(), node=node)


def decode_run_request(payload: bytes, subject: str) -> RunRequest:
    """Decode a run-now request (untrusted), raising :class:`DecodeError` with the reason."""
    if len(payload) > _MAX_REQUEST:
        raise DecodeError(subject, f"run request of {len(payload)} bytes is too large")
    return decode(payload, RunRequest, subject)


_MAX_REQUEST = 4096


async def publish_run_request(bus: Bus, request: RunRequest) -> None:
    """Put ``request`` on its worker's tick subject, for the worker's tick consumer.

    Raises:
        ControlError: JetStream did not take it.
    """
    subject = bus.subjects.tick(request.worker, request.node)
    headers = {MSG_ID: request.ref, RUN_HEADER: "1"}
    try:
        await bus.js.publish(subject, msgspec.json.encode(request), headers=headers)
    except (nats.errors.Error, OSError) as exc:
        raise ControlError(request.worker, str(exc) or type(exc).__name__) from exc


class ControlError(BusError):
    """A worker control that could not be read or written."""

    def __init__(self, worker: str, reason: str) -> None:
        self.worker = worker
        self.reason = reason
        super().__init__(f"bus: control of worker {worker!r} failed: {reason}")


_decode_control = msgspec.json.Decoder(WorkerControl).decode


class WorkerControls:
    """The worker controls bucket, followed: :meth:`get` answers from memory.

    Args:
        bus: A connected bus.
        on_change: Called (in the event loop) with a worker's name and its new
            controls (None once removed) whenever an entry changes, including
            those read at :meth:`open`.
    """

    def __init__(
        self,
        bus: Bus,
        on_change: Callable[[str, WorkerControl | None], None] | None = None,
    ) -> None:
        self._bus = bus
        self._on_change = on_change
        self._kv: KeyValue | None = None
        self._controls: dict[str, WorkerControl] = {}
        self._ready = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Create the bucket (or bind to it), read it whole, and follow it.

        Raises:
            ControlError: its entries could not be read within :data:`READY_WAIT`.
        """
        bucket = self._bus.subjects.controls_bucket
        await self._bus.patiently(self._open, f"bucket {bucket}")
        self._follow()
        self._bus.on_reconnect(self._reconnected)
        try:
            async with asyncio.timeout(READY_WAIT.total_seconds()):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise ControlError("*", f"bucket {bucket} not read within {READY_WAIT}") from None

    async def _open(self) -> None:
        bucket = self._bus.subjects.controls_bucket
        js = self._bus.js
        try:
            self._kv = await js.key_value(bucket)
            return
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            storage=StorageType.FILE,
            replicas=self._bus.limits.stream_replicas,
        )
        self._kv = await create_bucket(self._bus, config)

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise NotConnectedError("open() the worker controls first")
        return self._kv

    def _follow(self) -> None:
        self._follower = asyncio.create_task(self._watch(), name="worker-controls")

    async def _reconnected(self) -> None:
        # An ordered consumer's push may have missed updates while NATS was
        # away: watch afresh, which delivers every key's newest entry again.
        follower = self._follower
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            self._follow()

    async def _watch(self) -> None:
        delay, cap = _WATCH_BACKOFF
        while True:
            watcher: KeyValue.KeyWatcher | None = None
            try:
                watcher = await self._bucket.watchall()
                async for entry in watcher:
                    if entry is None:  # the current entries have all been read
                        self._ready.set()
                        delay = _WATCH_BACKOFF[0]
                        continue
                    self._apply(entry)
                return
            except asyncio.CancelledError:
                raise
            except (*RETRYABLE, nats.js.errors.Error, nats.errors.Error) as exc:
                log.warning("worker controls not followed; trying again", error=str(exc))
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    def _apply(self, entry: KeyValue.Entry) -> None:
        name = entry.key
        control: WorkerControl | None
        if entry.operation in (KV_DEL, KV_PURGE):
            control = None
        else:
            try:
                control = _decode_control(entry.value or b"")
            except (msgspec.DecodeError, RecursionError, ValueError) as exc:
                # A bad entry pauses nothing: running is the state a worker
                # has without any control.
                log.warning("worker control unreadable", worker=name, error=str(exc))
                control = None
        if self._controls.get(name) == control:
            return
        if control is None:
            self._controls.pop(name, None)
        else:
            self._controls[name] = control
        if self._on_change is not None:
            self._on_change(name, control)

    def get(self, worker: str) -> WorkerControl | None:
        """``worker``'s controls as last seen, None when it has none."""
        return self._controls.get(worker)

    def paused(self, worker: str) -> bool:
        """Whether ``worker`` is paused, as last seen."""
        control = self._controls.get(worker)
        return control is not None and control.paused

    async def read(self, worker: str) -> WorkerControl | None:
        """``worker``'s controls read from the bucket now (not from memory)."""
        try:
            entry = await self._bucket.get(worker)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (*RETRYABLE, nats.js.errors.Error) as exc:
            raise ControlError(worker, str(exc) or type(exc).__name__) from exc
        try:
            return _decode_control(entry.value or b"")
        except (msgspec.DecodeError, RecursionError, ValueError):
            return None

    async def put(self, worker: str, control: WorkerControl) -> None:
        """Write ``worker``'s controls; every process sees them within a round trip.

        Raises:
            ControlError: JetStream did not take the write.
        """
        try:
            await self._bucket.put(worker, msgspec.json.encode(control))
        except (*RETRYABLE, nats.js.errors.Error, nats.errors.Error) as exc:
            raise ControlError(worker, str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        """Stop following the bucket."""
        self._bus.off_reconnect(self._reconnected)
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


def pause_control(paused: bool, by: str) -> WorkerControl:
    """A control that pauses (or resumes) a worker, set by ``by`` now."""
    return WorkerControl(paused=paused, by=by, at=_now())


def _now() -> datetime:
    return datetime.now(UTC)
