"""The tcp checker against real local servers, and its target parsing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ctrlplane.checks import (
    TcpChecker,
)
from ctrlplane.checks.tcp import parse_host_port
from ctrlplane.store.health import Outcome
from ctrlplane.types import Probe
from tests.checks.helpers import INSTANCE, spec

# --- tcp --------------------------------------------------------------------------


class TcpServer:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.closed_by_client = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if await reader.read() == b"":
            self.closed_by_client.set()
        writer.close()
        await writer.wait_closed()


@pytest_asyncio.fixture
async def tcp_server() -> AsyncIterator[TcpServer]:
    state = TcpServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_passes_and_closes_the_connection(tcp_server: TcpServer) -> None:
    async with asyncio.timeout(5):
        probe = await TcpChecker().check(
            spec("tcp", target=f"127.0.0.1:{tcp_server.port}"), INSTANCE
        )
        assert probe == Probe(outcome=Outcome.PASS, message="connected")
        await tcp_server.closed_by_client.wait()
    assert tcp_server.connections == 1


async def test_tcp_resolves_host_names(tcp_server: TcpServer) -> None:
    probe = await TcpChecker().check(spec("tcp", target=f"localhost:{tcp_server.port}"), INSTANCE)
    assert probe.outcome == Outcome.PASS


async def test_tcp_ipv6_in_brackets() -> None:
    try:
        server = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        port = server.sockets[0].getsockname()[1]
        probe = await TcpChecker().check(spec("tcp", target=f"[::1]:{port}"), INSTANCE)
    finally:
        server.close()
        await server.wait_closed()
    assert probe.outcome == Outcome.PASS


async def test_tcp_connection_refused(closed_port: int) -> None:
    probe = await TcpChecker().check(spec("tcp", target=f"127.0.0.1:{closed_port}"), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="connection refused")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("example.com:65535", ("example.com", 65535)),
        (" localhost:1 ", ("localhost", 1)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_parse_host_port(target: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(target) == expected


@pytest.mark.parametrize(
    "target",
    [None, "", "  ", "localhost", "localhost:", ":80", "localhost:http", "localhost:0",
     "localhost:65536", "localhost:-1", "localhost:٣", "::1:80", "[::1]80", "[::1", "a b:80"],
)  # fmt: skip
def test_parse_host_port_rejects(target: str | None) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_host_port(target)
