"""The http checker against real local servers, well-behaved and hostile."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from aiohttp import web

from ctrlplane.certs.local_ca import LocalCA
from ctrlplane.checks import (
    HttpChecker,
)
from ctrlplane.checks.http import BODY_LIMIT
from ctrlplane.checks.text import MESSAGE_LIMIT, REASON_LIMIT
from ctrlplane.store.health import Outcome
from ctrlplane.types import Probe
from tests.checks.helpers import INSTANCE, spec
from tests.helpers import wait_for

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


async def test_http_a_long_reason_phrase_is_cut_with_a_marker(http_checker: HttpChecker) -> None:
    reason = "x" * 8_000 + "y" * 25  # within aiohttp's 8,190-byte status line
    state = Scripted(
        lambda head, n: (f"HTTP/1.1 503 {reason}\r\nContent-Length: 0\r\n\r\n".encode(), True)
    )
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe.outcome is Outcome.FAIL
    assert len(probe.message) <= len("503 ") + REASON_LIMIT
    assert probe.message.startswith("503 xxx")
    kept = probe.message.index("...") - len("503 ")
    assert probe.message.endswith(f"... [{len(reason) - kept:,} more characters]")


async def test_http_a_huge_status_line_is_refused_and_the_message_bounded(
    http_checker: HttpChecker,
) -> None:
    line = b"HTTP/1.1 503 " + b"x" * 60_000 + b"\r\nContent-Length: 0\r\n\r\n"
    state = Scripted(lambda head, n: (line, True))
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe.outcome is Outcome.FAIL
    assert probe.message.startswith("invalid HTTP response") and len(probe.message) <= MESSAGE_LIMIT


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


# --- hostile and broken servers ---------------------------------------------------------

# One answer per request: bytes to send, then whether to close the connection.
Answer = tuple[bytes, bool]


class Scripted:
    """A TCP server that reads requests and answers from a script.

    ``answer`` is called with the request head (bytes) and the connection's
    number and returns what to send and whether to close afterwards.
    """

    def __init__(self, answer: Callable[[bytes, int], Answer]) -> None:
        self.answer = answer
        self.port = 0
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                data, close = self.answer(head, number)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            self.open -= 1
            writer.close()


async def serve(state: Scripted, **kwargs: Any) -> asyncio.Server:
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, **kwargs)
    state.port = server.sockets[0].getsockname()[1]
    return server


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_http_stale_connections_never_exceed_the_pool(http_checker: HttpChecker) -> None:
    # Every connection answers once, then closes on the next request without a
    # word, as a server does whose idle timeout strikes just then. The old
    # client freed a slot twice on each retry and opened ever more connections.
    served: dict[int, int] = {}

    def answer(head: bytes, n: int) -> Answer:
        served[n] = served.get(n, 0) + 1
        return (b"", True) if served[n] > 1 else (ok(), False)

    state = Scripted(answer)
    checker = HttpChecker(max_connections=2)
    try:
        async with await serve(state):
            for _ in range(10):
                async with asyncio.timeout(10):
                    probes = await asyncio.gather(
                        *(checker.check(spec("http", target=state.url), INSTANCE) for _ in range(4))
                    )
                assert {p.outcome for p in probes} == {Outcome.PASS}
    finally:
        await checker.close()
    assert state.max_open <= 2


async def test_http_an_endless_chunked_trailer_fails_bounded(http_checker: HttpChecker) -> None:
    # The body ends, then one trailer field that never ends: up to 100 MiB.
    # The old client's parser kept all of it (RSS grew by more than it sent).
    filler = b"y" * 64 * 1024
    sent = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        writer.write(b"X-Filler: ")
        try:
            while sent < 100 * 1024 * 1024:
                writer.write(filler)
                sent += len(filler)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rss = psutil.Process().memory_info().rss
    try:
        probe = await http_checker.check(
            spec("http", target=f"http://127.0.0.1:{port}/", timeout=timedelta(seconds=10)),
            INSTANCE,
        )
    finally:
        server.close()
        await server.wait_closed()
    grown = psutil.Process().memory_info().rss - rss
    assert probe.outcome is Outcome.FAIL and len(probe.message) <= MESSAGE_LIMIT
    assert probe.message.startswith("invalid HTTP response"), probe.message
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown:,} bytes ({sent:,} sent)"


async def test_http_a_status_line_split_across_reads_is_read_whole(
    http_checker: HttpChecker,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Un")
        await writer.drain()
        await asyncio.sleep(0.05)  # a second segment, read on its own
        writer.write(b"available\r\nContent-Length: 4\r\n\r\ndown")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        probe = await http_checker.check(spec("http", target=f"http://127.0.0.1:{port}/"), INSTANCE)
    finally:
        server.close()
        await server.wait_closed()
    assert probe == Probe(outcome=Outcome.FAIL, message="503 Service Unavailable: down")


async def test_http_bytes_after_a_response_are_not_the_next_response(
    http_checker: HttpChecker,
) -> None:
    # A made-up second response sent in the same segment as the first answer
    # is dropped, not kept for the next request on the connection.
    smuggled = b"HTTP/1.1 503 Smuggled\r\nContent-Length: 0\r\n\r\n"

    def answer(head: bytes, n: int) -> Answer:
        return (ok() + smuggled if len(state.requests) == 1 else ok(b"real")), False

    state = Scripted(answer)
    async with await serve(state):
        first = await http_checker.check(spec("http", target=state.url), INSTANCE)
        second = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert first == Probe(outcome=Outcome.PASS, message="200 OK")
    assert second == Probe(outcome=Outcome.PASS, message="200 OK")


async def test_http_what_is_not_http_is_an_invalid_response(http_checker: HttpChecker) -> None:
    state = Scripted(lambda head, n: (b"SSH-2.0-OpenSSH_9.2\r\n", False))
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe.outcome is Outcome.FAIL
    assert probe.message.startswith("invalid HTTP response"), probe.message


async def test_http_an_endless_response_head_is_refused(http_checker: HttpChecker) -> None:
    header = b"X-Filler: " + b"y" * 1000 + b"\r\n"
    endless = b"HTTP/1.1 200 OK\r\n" + header * 1000
    state = Scripted(lambda head, n: (endless, False))
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe.outcome is Outcome.FAIL
    assert probe.message.startswith("invalid HTTP response"), probe.message
    assert len(probe.message) <= MESSAGE_LIMIT


async def test_http_server_closing_mid_response_fails(http_checker: HttpChecker) -> None:
    state = Scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", True))
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe.outcome is Outcome.FAIL, probe.message


async def test_http_server_closing_without_an_answer_is_disconnected(
    http_checker: HttpChecker,
) -> None:
    state = Scripted(lambda head, n: (b"", True))
    async with await serve(state):
        probe = await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="server disconnected")


async def test_http_chunked_interim_and_close_delimited_bodies(http_checker: HttpChecker) -> None:
    answers = {
        b"/chunked": (
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\ndown\r\n5\r\n, db!\r\n0\r\n\r\n",
            False,
        ),
        b"/interim": (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + ok(),
            False,
        ),
        b"/close": (b"HTTP/1.0 500 Broken\r\n\r\nall bad", True),
    }
    state = Scripted(lambda head, n: answers[head.split()[1]])
    async with await serve(state):
        probes = [
            await http_checker.check(spec("http", target=f"{state.url}{path}"), INSTANCE)
            for path in ("chunked", "interim", "close")
        ]
    assert probes == [
        Probe(outcome=Outcome.FAIL, message="503 Service Unavailable: down, db!"),
        Probe(outcome=Outcome.PASS, message="200 OK"),
        Probe(outcome=Outcome.FAIL, message="500 Broken: all bad"),
    ]


async def test_http_a_long_body_is_cut_and_its_connection_dropped(
    http_checker: HttpChecker,
) -> None:
    state = Scripted(lambda head, n: (ok(b"x" * (BODY_LIMIT * 4)), False))
    async with await serve(state):
        for _ in range(2):
            probe = await http_checker.check(
                spec("http", target=state.url, expected_status=(500, 599)), INSTANCE
            )
            assert probe.outcome is Outcome.FAIL and probe.message.startswith("200 OK: xxx")
    assert state.connections == 2


async def test_http_head_sends_no_body_and_user_info_is_basic_auth(
    http_checker: HttpChecker,
) -> None:
    state = Scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False))
    async with await serve(state):
        target = f"http://al%20ice:s3cret@127.0.0.1:{state.port}/h?x=1"
        probe = await http_checker.check(spec("http", target=target, method="head"), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message="200 OK")
    head = state.requests[0]
    assert head.startswith(b"HEAD /h?x=1 HTTP/1.1\r\n")
    assert b"Authorization: Basic YWwgaWNlOnMzY3JldA==\r\n" in head
    assert b"User-Agent: ctrlplane-health-check\r\n" in head
    assert b"Accept-Encoding" not in head and b"Cookie" not in head


async def test_http_sends_no_cookies_back(http_checker: HttpChecker) -> None:
    state = Scripted(lambda head, n: (ok(extra=b"Set-Cookie: session=abc; Path=/\r\n"), False))
    async with await serve(state):
        for _ in range(2):
            await http_checker.check(spec("http", target=state.url), INSTANCE)
    assert all(b"cookie" not in head.lower() for head in state.requests)


@pytest.mark.parametrize("method", ["GE T", "GET\r\nX-Injected: 1", "", "g\u0131t"])
async def test_http_what_is_not_a_method_is_unknown(http_checker: HttpChecker, method: str) -> None:
    probe = await http_checker.check(spec("http", target=_URL_NOWHERE, method=method), INSTANCE)
    assert probe.outcome is Outcome.UNKNOWN and "is not an HTTP method" in probe.message


_URL_NOWHERE = "http://127.0.0.1:1/"


async def test_https_verifies_the_certificate(tmp_path: Path, http_checker: HttpChecker) -> None:
    ca = LocalCA(tmp_path / "ca")
    issued = await ca.issue("localhost", timedelta(hours=1))
    (tmp_path / "cert.pem").write_bytes(issued.cert_pem + issued.chain_pem)
    (tmp_path / "key.pem").write_bytes(issued.key_pem)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    state = Scripted(lambda head, n: (ok(b"secure"), False))
    async with await serve(state, ssl=server_tls):
        # The system's CAs do not know this certificate.
        target = f"https://localhost:{state.port}/"
        probe = await http_checker.check(spec("http", target=target), INSTANCE)
    assert probe.outcome == Outcome.FAIL and probe.message.startswith("TLS error")
    assert "certificate verify failed" in probe.message


async def test_http_the_timeout_covers_a_body_that_stalls(http_checker: HttpChecker) -> None:
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with asyncio.timeout(5):
            probe = await http_checker.check(
                spec("http", target=url, timeout=timedelta(milliseconds=200)), INSTANCE
            )
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    assert probe == Probe(outcome=Outcome.FAIL, message="timed out after 0.2s")


def test_http_a_checker_belongs_to_one_event_loop_until_closed(closed_port: int) -> None:
    checker = HttpChecker()
    check = spec("http", target=f"http://127.0.0.1:{closed_port}/")
    refused = Probe(outcome=Outcome.FAIL, message="connection refused")
    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(checker.check(check, INSTANCE)) == refused
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(checker.check(check, INSTANCE))
        first.run_until_complete(checker.close())
    finally:
        first.close()

    async def again() -> Probe:
        try:
            return await checker.check(check, INSTANCE)
        finally:
            await checker.close()

    assert asyncio.run(again()) == refused
