"""HttpClient against real local servers that answer byte for byte what each test says."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from yarl import URL

from ctrlplane.certs.local_ca import LocalCA
from ctrlplane.checks import HttpChecker
from ctrlplane.checks.http_client import (
    HEAD_LIMIT,
    Disconnected,
    HttpClient,
    ProtocolError,
    Request,
    prepare,
)
from ctrlplane.store.health import CheckSpec, Outcome
from tests.helpers import make_instance

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
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests.append(head)
                data, close = self.answer(head, number)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()


async def serve(state: Scripted, **kwargs: object) -> asyncio.Server:
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    state.port = server.sockets[0].getsockname()[1]
    return server


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def get(state: Scripted, path: str = "/", method: str = "GET") -> Request:
    return prepare(URL(f"http://127.0.0.1:{state.port}{path}"), method, "test-agent")


@pytest_asyncio.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient(max_connections=4)
    try:
        yield c
    finally:
        await c.close()


async def test_keep_alive_reuses_one_connection(client: HttpClient) -> None:
    state = Scripted(lambda head, n: (ok(), False))
    async with await serve(state):
        for _ in range(3):
            response = await client.request(get(state))
            assert (response.status, response.reason, response.body) == (200, "OK", b"ok")
    assert state.connections == 1
    assert (
        state.requests[0]
        == (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{state.port}\r\n"
            "User-Agent: test-agent\r\nAccept: */*\r\n\r\n"
        ).encode()
    )


async def test_chunked_body_is_joined(client: HttpClient) -> None:
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\ndown\r\n5\r\n, db!\r\n0\r\n\r\n"
    )
    state = Scripted(lambda head, n: (chunked, False))
    async with await serve(state):
        first = await client.request(get(state))
        second = await client.request(get(state))
    assert (first.status, first.body) == (503, b"down, db!") and second == first
    assert state.connections == 1


async def test_body_ended_by_close_is_read_and_the_connection_not_reused(
    client: HttpClient,
) -> None:
    state = Scripted(lambda head, n: (b"HTTP/1.0 200 Fine\r\n\r\nall good", True))
    async with await serve(state):
        first = await client.request(get(state))
        second = await client.request(get(state))
    assert (first.status, first.reason, first.body) == (200, "Fine", b"all good")
    assert second == first and state.connections == 2


async def test_head_response_has_no_body_whatever_it_announces(client: HttpClient) -> None:
    def answer(head: bytes, n: int) -> Answer:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False
        return ok(b"after"), False

    state = Scripted(answer)
    async with await serve(state):
        head = await client.request(get(state, method="HEAD"))
        after = await client.request(get(state))
    assert (head.status, head.body) == (200, b"")
    assert after.body == b"after" and state.connections == 1


async def test_interim_responses_are_skipped(client: HttpClient) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok()
    state = Scripted(lambda head, n: (answer, False))
    async with await serve(state):
        response = await client.request(get(state))
    assert (response.status, response.reason, response.body) == (200, "OK", b"ok")


async def test_a_long_body_is_cut_and_its_connection_dropped() -> None:
    client = HttpClient(body_limit=10)
    state = Scripted(lambda head, n: (ok(b"x" * 100_000), False))
    try:
        async with await serve(state):
            first = await client.request(get(state))
            second = await client.request(get(state))
    finally:
        await client.close()
    assert first.body == b"x" * 10 and first.truncated and second == first
    assert state.connections == 2


async def test_what_is_not_http_is_a_protocol_error(client: HttpClient) -> None:
    state = Scripted(lambda head, n: (b"SSH-2.0-OpenSSH_9.2\r\n", False))
    async with await serve(state):
        with pytest.raises(ProtocolError, match="invalid HTTP response"):
            await client.request(get(state))


async def test_an_endless_response_head_is_refused(client: HttpClient) -> None:
    header = b"X-Filler: " + b"y" * 1000 + b"\r\n"
    endless = b"HTTP/1.1 200 OK\r\n" + header * (HEAD_LIMIT // len(header) + 2)
    state = Scripted(lambda head, n: (endless, False))
    async with await serve(state):
        with pytest.raises(ProtocolError, match="head exceeds"):
            await client.request(get(state))


async def test_server_closing_mid_response_is_disconnected(client: HttpClient) -> None:
    state = Scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", True))
    async with await serve(state):
        with pytest.raises(Disconnected) as caught:
            await client.request(get(state))
    assert caught.value.received


async def test_a_stale_kept_alive_connection_is_retried_for_get_only(client: HttpClient) -> None:
    # The first connection answers once and then closes on the next request
    # without a word, as a server does whose idle timeout struck just then.
    def answer(head: bytes, n: int) -> Answer:
        if n == 1 and len(state.requests) > 1:
            return b"", True
        return ok(), False

    state = Scripted(answer)
    async with await serve(state):
        await client.request(get(state))
        response = await client.request(get(state))
        assert response.status == 200 and state.connections == 2
        # A POST is not sent twice: on a stale connection it fails.
        state.connections = 0
        state.requests.clear()
        await client.request(get(state))  # on connection 2, now idle
        state.answer = lambda head, n: (b"", True)
        with pytest.raises(Disconnected) as caught:
            await client.request(get(state, method="POST"))
    assert not caught.value.received


def test_prepare_sends_user_info_as_basic_auth_and_an_ipv6_host() -> None:
    request = prepare(URL("http://al%20ice:s3cret@[::1]:8080/h?x=1"), "POST", "agent")
    assert request.data == (
        b"POST /h?x=1 HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: agent\r\nAccept: */*\r\n"
        b"Authorization: Basic YWwgaWNlOnMzY3JldA==\r\nContent-Length: 0\r\n\r\n"
    )
    assert (request.host, request.port, request.idempotent) == ("::1", 8080, False)


@pytest.mark.parametrize("url", ["ftp://h/", "http:///x", "/relative"])
def test_prepare_refuses_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="not an absolute http"):
        prepare(URL(url), "GET", "agent")


async def test_a_full_pool_of_idle_connections_to_others_makes_room() -> None:
    client = HttpClient(max_connections=1)
    a = Scripted(lambda head, n: (ok(b"a"), False))
    b = Scripted(lambda head, n: (ok(b"b"), False))
    try:
        async with await serve(a), await serve(b):
            async with asyncio.timeout(5):
                assert (await client.request(get(a))).body == b"a"
                assert (await client.request(get(b))).body == b"b"
                assert (await client.request(get(a))).body == b"a"
    finally:
        await client.close()
    assert a.connections == 2 and b.connections == 1


async def test_close_fails_requests_waiting_for_a_connection() -> None:
    client = HttpClient(max_connections=1)
    state = Scripted(lambda head, n: (ok(), False))
    async with await serve(state):
        # Hold the only connection with a request whose answer never comes.
        state.answer = lambda head, n: (b"", False)
        first = asyncio.create_task(client.request(get(state)))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(client.request(get(state)))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(ConnectionError, match="closed"):
            await second
        with pytest.raises(Disconnected):
            await first


async def test_a_cancelled_request_frees_its_slot() -> None:
    client = HttpClient(max_connections=1)
    state = Scripted(lambda head, n: (b"", False) if n == 1 else (ok(), False))
    try:
        async with await serve(state):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await client.request(get(state))
            async with asyncio.timeout(5):
                assert (await client.request(get(state))).status == 200
    finally:
        await client.close()


# --- https -----------------------------------------------------------------------


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "ca")
    issued = await ca.issue("localhost", timedelta(hours=1))
    (tmp_path / "cert.pem").write_bytes(issued.cert_pem + issued.chain_pem)
    (tmp_path / "key.pem").write_bytes(issued.key_pem)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trusting = HttpClient(ssl_context=ssl.create_default_context(cafile=str(ca.cert_path)))
    checker = HttpChecker()
    state = Scripted(lambda head, n: (ok(b"secure"), False))
    try:
        async with await serve(state, ssl=server_tls):
            url = URL(f"https://localhost:{state.port}/")
            response = await trusting.request(prepare(url, "GET", "agent"))
            assert response.body == b"secure"
            # The system's CAs do not know this certificate.
            probe = await checker.check(
                CheckSpec(name="tls", type="http", target=str(url)), make_instance()
            )
    finally:
        await trusting.close()
        await checker.close()
    assert probe.outcome == Outcome.FAIL and probe.message.startswith("TLS error")
    assert "certificate verify failed" in probe.message


async def test_the_pool_forgets_origins_it_no_longer_holds_connections_to() -> None:
    client = HttpClient(max_connections=2)
    states = [Scripted(lambda head, n: (ok(), False)) for _ in range(6)]
    servers = [await serve(state) for state in states]
    try:
        async with asyncio.timeout(5):
            for state in states * 2:
                assert (await client.request(get(state))).status == 200
        # Only the two newest origins still have (idle) connections.
        assert sorted(port for _, _, port in client._idle) == sorted(s.port for s in states[-2:])
        assert len(client._lru) == 2
    finally:
        await client.close()
        for server in servers:
            server.close()
    assert [s.connections for s in states] == [2] * 6


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_client_belongs_to_one_event_loop_until_closed() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = HttpClient()
    request = prepare(URL(f"http://127.0.0.1:{server.server_port}/"), "GET", "agent")

    async def status() -> int:
        return (await client.request(request)).status

    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(status()) == 200  # keeps its connection open
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(status())
        first.run_until_complete(client.close())
    finally:
        first.close()

    async def again() -> int:
        try:
            return await status()
        finally:
            await client.close()

    try:
        assert asyncio.run(again()) == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("method", ["GE T", "GET\r\nX-Injected: 1", "", "g\u0131t"])
def test_prepare_refuses_what_is_not_a_method(method: str) -> None:
    with pytest.raises(ValueError, match="is not an HTTP method"):
        prepare(URL("http://127.0.0.1:80/"), method, "agent")


def test_prepare_sends_the_method_in_capitals() -> None:
    assert prepare(URL("http://h:1/"), "get", "agent").data.startswith(b"GET / HTTP/1.1\r\n")
