"""The ``grpc`` check: the standard ``grpc.health.v1.Health/Check`` call.

grpcio is an optional extra (``ctrlplane-workers[grpc]``): it is imported
when a check runs, so this module, and :mod:`ctrlplane.checks`, import
without it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ctrlplane.checks.tcp import parse_host_port
from ctrlplane.checks.text import bounded
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe

MISSING_EXTRA = "grpc checks need the grpc extra: pip install 'ctrlplane-workers[grpc]'"


def _modules() -> tuple[Any, Any, Any] | None:
    """``grpc``, ``health_pb2`` and ``health_pb2_grpc``, or ``None`` without the extra."""
    try:
        import grpc
        import grpc.aio
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        return None
    return grpc, health_pb2, health_pb2_grpc


def _fail(head: str, details: str = "") -> Probe:
    return Probe(outcome=Outcome.FAIL, message=bounded(f"{head}: {details}" if details else head))


def _unknown(reason: str) -> Probe:
    return Probe(outcome=Outcome.UNKNOWN, message=bounded(f"grpc check: {reason}"))


class GrpcChecker:
    """Asks a server's ``grpc.health.v1.Health`` service about ``spec.service``.

    ``spec.target`` is ``host:port`` (``[::1]:port`` for IPv6), reached over
    an insecure (plain-text) channel; ``spec.service`` is the service to ask
    about, ``""`` for the server as a whole. ``SERVING`` passes; any other
    status fails with its name, as do an unknown service (``NOT_FOUND``), an
    unreachable server and the deadline (``spec.timeout``) passing.

    One channel per target is kept open between checks, in the event loop of
    the first check. A channel that reports the server unavailable is replaced
    by a fresh one at the next check, so a server that comes back is seen at
    once rather than after gRPC's reconnect back-off. Call :meth:`close` when
    done.
    """

    type: str = "grpc"

    def __init__(self) -> None:
        self._channels: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _channel(self, grpc: Any, target: str) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._channels:
                raise RuntimeError(
                    "GrpcChecker: its channels belong to another event loop; close() it there first"
                )
            self._loop = loop
        channel = self._channels.get(target)
        if channel is None:
            # By default channels to the same target share their connections
            # through a process-wide pool, so a fresh channel would inherit a
            # broken connection's reconnect back-off; a local pool is really fresh.
            options = [("grpc.use_local_subchannel_pool", 1)]
            channel = self._channels[target] = grpc.aio.insecure_channel(target, options=options)
        return channel

    def _discard(self, target: str, channel: Any, grace: float) -> None:
        """Close ``channel`` in the background, letting other checks' calls on it finish."""
        if self._channels.get(target) is not channel:
            return  # another check replaced it already
        stale = self._channels.pop(target)
        task = asyncio.create_task(stale.close(grace=grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Call ``Health/Check`` once, with ``spec.timeout`` as the deadline."""
        modules = _modules()
        if modules is None:
            return Probe(outcome=Outcome.UNKNOWN, message=MISSING_EXTRA)
        grpc, health_pb2, health_pb2_grpc = modules
        try:
            host, port = parse_host_port(spec.target)
        except ValueError as exc:
            return _unknown(str(exc))
        seconds = spec.timeout.total_seconds()
        if seconds <= 0:
            return _unknown("the timeout must be positive")
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        channel = self._channel(grpc, target)
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=spec.service)
        try:
            response = await stub.Check(request, timeout=seconds)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), str(exc.details() or "")
            if code == grpc.StatusCode.UNAVAILABLE:
                self._discard(target, channel, seconds)
                if "connection refused" in details.lower():
                    return _fail("connection refused")  # as the http and tcp checks say it
                return _fail("unavailable", details)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return _fail(f"timed out after {seconds:g}s")
            if code == grpc.StatusCode.NOT_FOUND:
                return _fail(f"the server does not know the service {spec.service!r} (NOT_FOUND)")
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return _fail("the server does not implement grpc.health.v1 (UNIMPLEMENTED)")
            return _fail(str(code.name), details)
        statuses = health_pb2.HealthCheckResponse.ServingStatus
        try:
            name = str(statuses.Name(response.status))
        except ValueError:
            name = f"status {response.status}"
        if response.status == statuses.Value("SERVING"):
            return Probe(outcome=Outcome.PASS, message=name)
        return _fail(name)

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels, self._loop = list(self._channels.values()), {}, None
        for channel in channels:
            await channel.close()
        if self._closing:
            await asyncio.wait(self._closing)
