"""The built-in checkers against real local servers and real commands, and their loading."""

from __future__ import annotations

import asyncio
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
import pytest_asyncio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import ctrlplane.checks.registry
import ctrlplane.plugins
from ctrlplane.checks import (
    CheckerLoadError,
    CommandChecker,
    GrpcChecker,
    HttpChecker,
    TcpChecker,
    builtin_checkers,
    close_checkers,
    load_checkers,
)
from ctrlplane.checks.command import OUTPUT_LIMIT
from ctrlplane.checks.grpc import MISSING_EXTRA
from ctrlplane.checks.tcp import parse_host_port
from ctrlplane.checks.text import MESSAGE_LIMIT, REASON_LIMIT, bounded
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import DesiredState, Instance, InstanceSpec, InstanceState
from ctrlplane.types import Checker, Probe
from tests.helpers import wait_for

_NOW = datetime.now(UTC)
INSTANCE = Instance(
    id="i-test",
    name="test",
    provider="process",
    spec=InstanceSpec(command=["true"]),
    spec_hash="0",
    desired=DesiredState.RUNNING,
    state=InstanceState.RUNNING,
    created=_NOW,
    updated=_NOW,
)
PY = sys.executable


def spec(type: str, **fields: Any) -> CheckSpec:
    return CheckSpec(name="check", type=type, **fields)


@pytest.fixture
def closed_port() -> int:
    """A port that was bound on 127.0.0.1 and closed again: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- http -------------------------------------------------------------------------


class HttpApp:
    """A local aiohttp server whose handlers record what they see."""

    def __init__(self) -> None:
        self.url = ""
        self.peers: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = asyncio.Event()  # /ok answers once it is set
        self.gate.set()
        self.release = asyncio.Event()  # ends /slow

    async def ok(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[:2])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return web.Response(text="ok")

    async def unavailable(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="database\n   down")

    async def slow(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text="late")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/unavailable")

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (1024 * 1024))


@pytest_asyncio.fixture
async def http_app() -> AsyncIterator[HttpApp]:
    state = HttpApp()
    app = web.Application()
    app.router.add_route("*", "/ok", state.ok)
    app.router.add_get("/get-only", state.ok)
    app.router.add_get("/unavailable", state.unavailable)
    app.router.add_get("/slow", state.slow)
    app.router.add_get("/redirect", state.redirect)
    app.router.add_get("/big", state.big)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        state.url = f"http://{host}:{port}"
        yield state
    finally:
        state.release.set()
        state.gate.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def http_checker() -> AsyncIterator[HttpChecker]:
    checker = HttpChecker()
    try:
        yield checker
    finally:
        await checker.close()


async def test_http_passes_on_200(http_app: HttpApp, http_checker: HttpChecker) -> None:
    probe = await http_checker.check(spec("http", target=f"{http_app.url}/ok"), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message="200 OK")


async def test_http_fails_on_503_and_quotes_the_body(
    http_app: HttpApp, http_checker: HttpChecker
) -> None:
    probe = await http_checker.check(spec("http", target=f"{http_app.url}/unavailable"), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="503 Service Unavailable: database down")


async def test_http_a_huge_reason_phrase_is_cut_with_a_marker(http_checker: HttpChecker) -> None:
    reason = "x" * 60_000 + "y" * 25

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 503 {reason}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        probe = await http_checker.check(spec("http", target=f"http://127.0.0.1:{port}/"), INSTANCE)
    finally:
        server.close()
        await server.wait_closed()
    assert probe.outcome is Outcome.FAIL
    assert len(probe.message) <= len("503 ") + REASON_LIMIT
    assert probe.message.startswith("503 xxx")
    assert probe.message.endswith(" more characters]")
    kept = probe.message.index("...") - len("503 ")
    assert probe.message.endswith(f"... [{len(reason) - kept:,} more characters]")


def test_bounded_keeps_short_text_and_cuts_long_text_within_the_limit() -> None:
    assert bounded("200 OK") == "200 OK"
    assert bounded("x" * MESSAGE_LIMIT) == "x" * MESSAGE_LIMIT
    for size in (MESSAGE_LIMIT + 1, 10_000, 60_025, 1_000_000):
        cut = bounded("x" * size)
        assert len(cut) <= MESSAGE_LIMIT and cut.endswith(" more characters]")
        kept = cut.index("...")
        assert f"[{size - kept:,} more characters]" in cut


async def test_command_output_that_is_long_is_stored_bounded() -> None:
    code = "import sys; sys.stdout.write('z' * 100_000); sys.exit(1)"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome is Outcome.FAIL and len(probe.message) <= MESSAGE_LIMIT


async def test_http_expected_status_is_an_inclusive_range(
    http_app: HttpApp, http_checker: HttpChecker
) -> None:
    target = f"{http_app.url}/unavailable"
    passing = await http_checker.check(
        spec("http", target=target, expected_status=(500, 503)), INSTANCE
    )
    failing = await http_checker.check(
        spec("http", target=target, expected_status=(500, 502)), INSTANCE
    )
    assert passing.outcome == Outcome.PASS and passing.message == "503 Service Unavailable"
    assert failing.outcome == Outcome.FAIL


async def test_http_uses_the_method(http_app: HttpApp, http_checker: HttpChecker) -> None:
    target = f"{http_app.url}/get-only"
    assert (await http_checker.check(spec("http", target=target), INSTANCE)).outcome == Outcome.PASS
    probe = await http_checker.check(spec("http", target=target, method="POST"), INSTANCE)
    assert probe.outcome == Outcome.FAIL and probe.message.startswith("405 Method Not Allowed")
    # Methods are sent in capitals, whatever the config says.
    lower = await http_checker.check(spec("http", target=target, method="get"), INSTANCE)
    assert lower.outcome == Outcome.PASS


async def test_http_does_not_follow_redirects(http_app: HttpApp, http_checker: HttpChecker) -> None:
    target = f"{http_app.url}/redirect"
    probe = await http_checker.check(spec("http", target=target), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message="302 Found")
    strict = await http_checker.check(
        spec("http", target=target, expected_status=(200, 200)), INSTANCE
    )
    assert strict.outcome == Outcome.FAIL and strict.message.startswith("302 Found")


async def test_http_connection_refused(closed_port: int, http_checker: HttpChecker) -> None:
    target = f"http://127.0.0.1:{closed_port}/"
    probe = await http_checker.check(spec("http", target=target), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="connection refused")


async def test_http_applies_the_timeout_itself(
    http_app: HttpApp, http_checker: HttpChecker
) -> None:
    timeout = timedelta(milliseconds=200)
    probe = await http_checker.check(
        spec("http", target=f"{http_app.url}/slow", timeout=timeout), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.FAIL, message="timed out after 0.2s")


async def test_http_cancelled_check_gives_its_connection_back(http_app: HttpApp) -> None:
    checker = HttpChecker(max_connections=1)
    try:
        slow = spec("http", target=f"{http_app.url}/slow", timeout=timedelta(seconds=30))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await checker.check(slow, INSTANCE)
        # With a pool of one, a leaked connection would make this wait forever.
        async with asyncio.timeout(5):
            probe = await checker.check(spec("http", target=f"{http_app.url}/ok"), INSTANCE)
        assert probe.outcome == Outcome.PASS
    finally:
        await checker.close()


async def test_http_reuses_one_connection(http_app: HttpApp, http_checker: HttpChecker) -> None:
    for _ in range(5):
        probe = await http_checker.check(spec("http", target=f"{http_app.url}/ok"), INSTANCE)
        assert probe.outcome == Outcome.PASS
    assert len(http_app.peers) == 1


async def test_http_large_body_passes(http_app: HttpApp, http_checker: HttpChecker) -> None:
    big = await http_checker.check(spec("http", target=f"{http_app.url}/big"), INSTANCE)
    after = await http_checker.check(spec("http", target=f"{http_app.url}/ok"), INSTANCE)
    assert big.outcome == Outcome.PASS and after.outcome == Outcome.PASS


async def test_http_connector_limit_is_honoured(http_app: HttpApp) -> None:
    checker = HttpChecker(max_connections=2)
    http_app.gate.clear()
    try:
        checks = [
            asyncio.create_task(checker.check(spec("http", target=f"{http_app.url}/ok"), INSTANCE))
            for _ in range(6)
        ]
        await wait_for(lambda: http_app.in_flight == 2, within=5)
        http_app.gate.set()
        async with asyncio.timeout(5):
            probes = await asyncio.gather(*checks)
    finally:
        await checker.close()
    assert [p.outcome for p in probes] == [Outcome.PASS] * 6
    # Without the limit each of the six concurrent checks opens a connection.
    assert http_app.max_in_flight == 2 and len(http_app.peers) == 2


def test_http_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        HttpChecker(max_connections=0)


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


# --- command ----------------------------------------------------------------------


async def test_command_passes_on_exit_0() -> None:
    probe = await CommandChecker().check(
        spec("command", command=[PY, "-c", "print('hi')"]), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.PASS, message="exit 0: hi")


async def test_command_fails_with_exit_code_and_output() -> None:
    code = "import sys; print('out'); sys.stdout.flush(); sys.exit('boom')"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="exit 1: out\nboom")
    probe = await CommandChecker().check(
        spec("command", command=[PY, "-c", "raise SystemExit(3)"]), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.FAIL, message="exit 3")


async def test_command_killed_by_a_signal_fails() -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="killed by SIGTERM")


async def test_command_keeps_only_the_tail_of_the_output() -> None:
    code = "print('x' * 100_000 + 'END')"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome == Outcome.PASS
    assert probe.message.startswith("exit 0: ...x") and probe.message.endswith("xEND")
    assert len(probe.message) <= len("exit 0: ...") + OUTPUT_LIMIT


async def test_command_arguments_never_reach_a_shell(tmp_path: Path) -> None:
    literal = f"a; touch {tmp_path}/y $(touch {tmp_path}/z) `touch {tmp_path}/w` | cat"
    argv = [PY, "-c", "import sys; print(sys.argv[1])", literal]
    probe = await CommandChecker().check(spec("command", command=argv), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message=f"exit 0: {literal}")
    assert _names(tmp_path) == []


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _gone(pid: int) -> bool:
    """Not running: reaped, or a zombie left to whoever adopted it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_command_timed_out_is_killed_and_reaped() -> None:
    before = _children()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await CommandChecker().check(spec("command", command=["sleep", "30"]), INSTANCE)
    assert time.monotonic() - started < 2
    # Not even a zombie: the check reaped its child before letting the timeout through.
    assert _children() - before == set()


async def test_command_cancelled_kills_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = textwrap.dedent(
        """
        import os, subprocess, sys, time
        child = subprocess.Popen(["sleep", "30"])
        open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(30)
        """
    )
    task = asyncio.create_task(
        CommandChecker().check(spec("command", command=[PY, "-c", code, str(pids)]), INSTANCE)
    )
    await wait_for(pids.exists, within=5)
    command_pid, grandchild_pid = map(int, pids.read_text().split())
    assert not _gone(grandchild_pid)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert not psutil.pid_exists(command_pid)
    await wait_for(lambda: _gone(grandchild_pid), within=2)


async def test_command_leftovers_are_killed_when_it_exits() -> None:
    # The background sleep inherits stdout: left alone it would hold the pipe open for 30 s.
    code = "import subprocess; print(subprocess.Popen(['sleep', '30']).pid)"
    async with asyncio.timeout(5):
        probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome == Outcome.PASS
    leftover = int(probe.message.removeprefix("exit 0: "))
    await wait_for(lambda: _gone(leftover), within=2)


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


# --- malformed checks of every type -----------------------------------------------

_URL = "http://127.0.0.1:1/"


@pytest.mark.parametrize(
    ("type", "fields"),
    [
        ("http", {}),
        ("http", {"target": ""}),
        ("http", {"target": "ftp://example.com/"}),
        ("http", {"target": "not a url"}),
        ("http", {"target": "http://"}),
        ("http", {"target": "http://[bad/"}),
        ("http", {"target": "http://127.0.0.1:99999/"}),
        ("http", {"target": "http://127.0.0.1:0/"}),
        ("http", {"target": _URL, "method": "GE T"}),
        ("http", {"target": _URL, "expected_status": (300, 200)}),
        ("http", {"target": _URL, "timeout": timedelta(0)}),
        ("tcp", {}),
        ("tcp", {"target": "localhost"}),
        ("tcp", {"target": "localhost:http"}),
        ("tcp", {"target": "localhost:70000"}),
        ("tcp", {"target": "::1:80"}),
        ("tcp", {"target": "http://localhost:80"}),
        ("tcp", {"target": "a..b:80"}),
        ("command", {}),
        ("command", {"command": []}),
        ("command", {"command": [""]}),
        ("command", {"command": ["definitely-not-a-command-7f3a"]}),
        ("command", {"command": ["/nonexistent/bin/check"]}),
        ("command", {"command": ["/"]}),
        ("command", {"command": ["echo", "a\0b"]}),
        ("grpc", {}),
        ("grpc", {"target": "localhost"}),
        ("grpc", {"target": "localhost:99999"}),
        ("grpc", {"target": "127.0.0.1:1", "timeout": timedelta(0)}),
    ],
)
async def test_malformed_checks_are_unknown_with_a_reason(
    type: str, fields: dict[str, Any]
) -> None:
    checkers = builtin_checkers()
    try:
        probe = await checkers[type].check(spec(type, **fields), INSTANCE)
    finally:
        await close_checkers(checkers)
    assert probe.outcome == Outcome.UNKNOWN
    assert probe.message.startswith(f"{type} check") and len(probe.message) > 20


# --- registry ---------------------------------------------------------------------


class EchoChecker:
    type: str = "echo"

    def __init__(self) -> None:
        self.closed = False

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS, message=spec.target or "")

    async def close(self) -> None:
        self.closed = True


class SyncCloseChecker(EchoChecker):
    type: str = "sync-close"

    def close(self) -> None:  # type: ignore[override]
        self.closed = True


class FailingCloseChecker(EchoChecker):
    type: str = "failing-close"

    async def close(self) -> None:
        raise RuntimeError("cannot close")


class NoCloseChecker:
    type: str = "no-close"

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class HttpOverride(EchoChecker):
    type: str = "http"


class SyncChecker:
    type: str = "sync"

    def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class UntypedChecker:
    type: str = ""

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class BrokenChecker(EchoChecker):
    def __init__(self) -> None:
        raise RuntimeError("no config")


def make_echo() -> EchoChecker:
    return EchoChecker()


ECHO = EchoChecker()
NOT_A_CHECKER = object()


def _entry_points(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    eps = [
        EntryPoint(name=name, value=value, group=ctrlplane.checks.registry.ENTRY_POINT_GROUP)
        for name, value in values.items()
    ]

    def fake(*, group: str) -> list[EntryPoint]:
        assert group == ctrlplane.checks.registry.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(ctrlplane.plugins, "entry_points", fake)


def test_builtin_checkers() -> None:
    checkers = builtin_checkers()
    assert sorted(checkers) == ["command", "grpc", "http", "tcp"]
    for name, checker in checkers.items():
        assert isinstance(checker, Checker) and checker.type == name


@pytest.mark.parametrize("value", ["EchoChecker", "make_echo", "ECHO"])
async def test_load_checkers_from_entry_points(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _entry_points(monkeypatch, echo=f"tests.test_checks:{value}")
    checkers = load_checkers()
    assert sorted(checkers) == ["command", "echo", "grpc", "http", "tcp"]
    assert isinstance(checkers["echo"], EchoChecker)
    probe = await checkers["echo"].check(spec("echo", target="hello"), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message="hello")


def test_a_plugin_replaces_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, http="tests.test_checks:HttpOverride")
    assert isinstance(load_checkers()["http"], HttpOverride)


@pytest.mark.parametrize(
    ("values", "bad", "reason"),
    [
        ({"gone": "tests.no_such_module:Checker"}, "gone", "cannot load"),
        ({"missing": "tests.test_checks:NoSuchChecker"}, "missing", "cannot load"),
        ({"object": "tests.test_checks:NOT_A_CHECKER"}, "object", "is not a checker"),
        ({"sync": "tests.test_checks:SyncChecker"}, "sync", "async"),
        ({"untyped": "tests.test_checks:UntypedChecker"}, "untyped", "non-empty string"),
        ({"broken": "tests.test_checks:BrokenChecker"}, "broken", "no config"),
        (
            {"echo": "tests.test_checks:EchoChecker", "echo2": "tests.test_checks:make_echo"},
            "echo2",
            "provided by entry point 'echo'",
        ),
    ],
)
def test_a_broken_entry_point_is_named(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], bad: str, reason: str
) -> None:
    _entry_points(monkeypatch, **values)
    with pytest.raises(CheckerLoadError, match=reason) as caught:
        load_checkers()
    assert caught.value.ref.startswith(f"entry point {bad!r} (")
    assert str(caught.value).startswith(f"checker entry point {bad!r}")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.ref, copy.reason) == (caught.value.ref, caught.value.reason)


async def test_close_checkers_closes_each_once_and_survives_failures() -> None:
    echo, sync = EchoChecker(), SyncCloseChecker()
    checkers: dict[str, Checker] = {
        "failing": FailingCloseChecker(),
        "echo": echo,
        "alias": echo,
        "sync": sync,
        "none": NoCloseChecker(),
    }
    await close_checkers(checkers)
    assert echo.closed and sync.closed
    other = EchoChecker()
    await close_checkers([other])
    assert other.closed


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Iterator[None]:
    """Every check reaps what it started."""
    before = _children()
    yield
    assert _children() - before == set()
