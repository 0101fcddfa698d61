"""The grpc checker against a real grpc_health server."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ctrlplane.checks import (
    GrpcChecker,
)
from ctrlplane.checks.grpc import MISSING_EXTRA
from ctrlplane.store.health import Outcome
from ctrlplane.types import Probe
from tests.checks.helpers import INSTANCE, PY, spec

# --- grpc -------------------------------------------------------------------------


class RecordingHealth:
    """grpc_health's servicer, recording the peer of every call; it can stall."""

    def __init__(self) -> None:
        self.inner = health.aio.HealthServicer()
        self.peers: list[str] = []
        self.stall = False

    async def Check(self, request: Any, context: Any) -> Any:
        self.peers.append(context.peer())
        if self.stall:
            await asyncio.Event().wait()
        return await self.inner.Check(request, context)

    def __getattr__(self, name: str) -> Any:  # Watch, List: as grpc_health has them
        return getattr(self.inner, name)


class GrpcServer:
    def __init__(self, server: Any, servicer: RecordingHealth, port: int) -> None:
        self.server = server
        self.servicer = servicer
        self.target = f"127.0.0.1:{port}"


async def _start_grpc(address: str = "127.0.0.1:0") -> GrpcServer:
    server = grpc.aio.server()
    servicer = RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    await servicer.inner.set("svc", health_pb2.HealthCheckResponse.SERVING)
    await servicer.inner.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return GrpcServer(server, servicer, port)


@pytest_asyncio.fixture
async def grpc_server() -> AsyncIterator[GrpcServer]:
    started = await _start_grpc()
    try:
        yield started
    finally:
        await started.server.stop(None)


@pytest_asyncio.fixture
async def grpc_checker() -> AsyncIterator[GrpcChecker]:
    checker = GrpcChecker()
    try:
        yield checker
    finally:
        await checker.close()


@pytest.mark.parametrize(
    ("service", "outcome", "message"),
    [
        ("svc", Outcome.PASS, "SERVING"),
        ("", Outcome.PASS, "SERVING"),
        ("down", Outcome.FAIL, "NOT_SERVING"),
        ("nope", Outcome.FAIL, "the server does not know the service 'nope' (NOT_FOUND)"),
    ],
)
async def test_grpc_statuses(
    grpc_server: GrpcServer, grpc_checker: GrpcChecker, service: str, outcome: Outcome, message: str
) -> None:
    probe = await grpc_checker.check(
        spec("grpc", target=grpc_server.target, service=service), INSTANCE
    )
    assert probe == Probe(outcome=outcome, message=message)


async def test_grpc_unreachable(closed_port: int, grpc_checker: GrpcChecker) -> None:
    probe = await grpc_checker.check(spec("grpc", target=f"127.0.0.1:{closed_port}"), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="connection refused")


async def test_grpc_deadline(grpc_server: GrpcServer, grpc_checker: GrpcChecker) -> None:
    grpc_server.servicer.stall = True
    timeout = timedelta(milliseconds=200)
    probe = await grpc_checker.check(
        spec("grpc", target=grpc_server.target, timeout=timeout), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.FAIL, message="timed out after 0.2s")


async def test_grpc_server_without_health_service(
    closed_port: int, grpc_checker: GrpcChecker
) -> None:
    server = grpc.aio.server()
    server.add_insecure_port(f"127.0.0.1:{closed_port}")
    await server.start()
    try:
        probe = await grpc_checker.check(spec("grpc", target=f"127.0.0.1:{closed_port}"), INSTANCE)
    finally:
        await server.stop(None)
    assert probe.outcome == Outcome.FAIL and "UNIMPLEMENTED" in probe.message


async def test_grpc_reuses_its_channel(grpc_server: GrpcServer, grpc_checker: GrpcChecker) -> None:
    check = spec("grpc", target=grpc_server.target, service="svc")
    for _ in range(3):
        assert (await grpc_checker.check(check, INSTANCE)).outcome == Outcome.PASS
    assert len(set(grpc_server.servicer.peers)) == 1
    await grpc_checker.close()
    assert (await grpc_checker.check(check, INSTANCE)).outcome == Outcome.PASS
    assert len(set(grpc_server.servicer.peers)) == 2


async def test_grpc_sees_a_server_come_back_at_once(
    closed_port: int, grpc_checker: GrpcChecker
) -> None:
    check = spec("grpc", target=f"127.0.0.1:{closed_port}", service="svc")
    assert (await grpc_checker.check(check, INSTANCE)).outcome == Outcome.FAIL
    started = await _start_grpc(f"127.0.0.1:{closed_port}")
    try:
        probe = await grpc_checker.check(check, INSTANCE)
    finally:
        await started.server.stop(None)
    assert probe == Probe(outcome=Outcome.PASS, message="SERVING")


def test_checks_import_and_answer_without_grpc() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["grpc"] = None  # as if grpcio were not installed
        sys.modules["grpc_health"] = None
        import ctrlplane.checks
        from ctrlplane.store.health import CheckSpec
        spec = CheckSpec(name="g", type="grpc", target="127.0.0.1:1")
        probe = asyncio.run(ctrlplane.checks.GrpcChecker().check(spec, None))
        print(probe.outcome.value, probe.message, sep="|")
        """
    )
    done = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"unknown|{MISSING_EXTRA}"
