"""A lean HTTP/1.1 client for health checks: a bounded keep-alive pool, parsed by httptools.

A health check needs the status line and at most a bounded piece of the body;
a general-purpose client (aiohttp's) spends three to four times the CPU per
request on what a check never uses (cookie jars, redirects, tracing, header
multidicts, a timer per phase). Ten thousand checks every 30 s make that the
health runner's main cost, so the http checker speaks HTTP/1.1 itself: a
request is bytes prepared once per target, a response is parsed by llhttp
(through httptools) straight into a status, a reason and a body.

What it does: GET/HEAD/any method without a request body; http and https
(certificates verified against the system's CAs); Content-Length, chunked and
close-delimited bodies; 1xx interim responses skipped; keep-alive with at most
``max_connections`` connections open in all; a request on a reused connection
that the server closed meanwhile is sent once more on a new one (idempotent
methods only). What it does not: redirects (a check judges the status the
instance answered), proxies, cookies, request bodies, HTTP/2.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import ssl
from datetime import timedelta

import httptools
from msgspec import Struct
from yarl import URL

from ctrlplane.checks.text import REASON_LIMIT, bounded
from ctrlplane.errors import CtrlplaneError

# Methods RFC 9110 calls idempotent: safe to send again when a reused
# connection turns out to have been closed before the request reached it.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose requests usually carry a body: say it is empty, so that the
# server neither waits for one nor answers 411 Length Required.
_EMPTY_BODY = frozenset({"POST", "PUT", "PATCH"})
# A response head (status line and headers) larger than this is refused.
HEAD_LIMIT = 64 * 1024
# An HTTP method is a token (RFC 9110): nothing that could break the request line.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class HttpClientError(CtrlplaneError):
    """A response could not be read."""


class ProtocolError(HttpClientError):
    """The peer did not answer in HTTP/1.x.

    Attributes:
        reason: What was wrong with the answer.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid HTTP response: {reason}")

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str]]:
        return type(self), (self.reason,)


class Disconnected(HttpClientError):
    """The server closed the connection before the whole response arrived.

    Attributes:
        received: Whether any byte of a response had arrived.
    """

    def __init__(self, received: bool) -> None:
        self.received = received
        super().__init__("server disconnected")

    def __reduce__(self) -> tuple[type[Disconnected], tuple[bool]]:
        return type(self), (self.received,)


class Request(Struct, frozen=True):
    """A request prepared once and sent as often as needed.

    Build it with :func:`prepare`.
    """

    scheme: str
    host: str
    port: int
    data: bytes
    head: bool
    idempotent: bool


class Response(Struct, frozen=True):
    """What a check learns from an answer.

    Attributes:
        status: The status code.
        reason: The reason phrase ("" when the server sent none).
        body: The body, at most the client's ``body_limit`` bytes of it.
        truncated: Whether the body was longer than that (the rest was not read).
    """

    status: int
    reason: str
    body: bytes
    truncated: bool = False


def prepare(url: URL, method: str, user_agent: str) -> Request:
    """The request ``method url`` as bytes, with Host, User-Agent and (from the
    URL's user info) basic Authorization. The method is sent in capitals, as
    aiohttp sends it: "get" means GET.

    Raises:
        ValueError: the URL is not absolute http(s), or the method or the
            URL's target holds characters that cannot be sent in a request line.
    """
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise ValueError(f"{str(url)!r} is not an absolute http or https URL")
    if not _METHOD.fullmatch(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    method = method.upper()  # after the check: some non-ASCII letters upper-case to ASCII
    target = url.raw_path_qs or "/"
    if any(c.isspace() or not c.isprintable() for c in target):
        raise ValueError(f"{target!r} cannot be sent as a request target")
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {url.host_port_subcomponent}",
        f"User-Agent: {user_agent}",
        "Accept: */*",
    ]
    if url.user is not None:
        credentials = f"{url.user}:{url.password or ''}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    if method in _EMPTY_BODY:
        lines.append("Content-Length: 0")
    return Request(
        scheme=url.scheme,
        host=url.raw_host,
        port=url.port,
        data=("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"),
        head=method == "HEAD",
        idempotent=method in _IDEMPOTENT,
    )


class _Connection(asyncio.Protocol):
    """One connection: sends a request, parses one response at a time."""

    def __init__(self, pool: HttpClient, key: tuple[str, str, int]) -> None:
        self.key = key
        self.counted = True  # holds one of the pool's max_connections slots
        self.idle_since = 0.0
        self.keep_alive = False
        self._pool = pool
        self._limit = pool.body_limit
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._head = False
        self._reason = b""
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self._framed = False  # a Content-Length or Transfer-Encoding header was seen
        self._headers_done = False
        self._received = False

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def exchange(self, request: Request) -> asyncio.Future[Response]:
        """Send ``request``; the future resolves with its response."""
        assert self._transport is not None and self._waiter is None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = self._pool.loop.create_future()
        self._head = request.head
        self._reason, self._body, self._size, self._head_size = b"", [], 0, 0
        self._framed = self._headers_done = self._received = False
        self.keep_alive = False
        self._transport.write(request.data)
        return self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._headers_done and not self._framed:
                self._finish()  # the body ended with the connection, as HTTP/1.0 allows
            else:
                self._fail(Disconnected(self._received))
        self._pool._lost(self)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._waiter is None or self._waiter.done() or parser is None:
            # Bytes nobody asked for: this connection is out of step; drop it.
            self.close()
            return
        self._received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish()  # 101 Switching Protocols: an answer, but not HTTP any more
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(str(exc) or type(exc).__name__))
        if not self._headers_done:
            # llhttp sets no limit on a response head; a peer that never ends
            # one would have us buffer forever.
            self._head_size += len(data)
            if self._head_size > HEAD_LIMIT:
                self._fail(ProtocolError(f"the response head exceeds {HEAD_LIMIT} bytes"))

    # httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head and not self._interim():
            assert self._parser is not None
            self.keep_alive = self._parser.should_keep_alive()
            self._finish()  # a HEAD response has no body, whatever it announces

    def on_body(self, body: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            return
        room = self._limit - self._size
        self._size += len(body)
        if room > 0:
            self._body.append(body[:room] if len(body) > room else body)
        if self._size > self._limit:
            self._finish()  # too long to read to its end: answer now, drop the connection

    def on_message_complete(self) -> None:
        if self._interim():
            # 100 Continue, 103 Early Hints: the real response follows.
            self._reason, self._body, self._size = b"", [], 0
            self._framed = self._headers_done = False
            return
        if self._waiter is not None and not self._waiter.done():
            assert self._parser is not None
            self.keep_alive = self._parser.should_keep_alive()
            self._finish()

    # internals

    def _interim(self) -> bool:
        assert self._parser is not None
        return 100 <= self._parser.get_status_code() < 200 and self._parser.get_status_code() != 101

    def _finish(self) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done() or parser is None:
            return
        waiter.set_result(
            Response(
                status=parser.get_status_code(),
                reason=bounded(self._reason.decode("latin-1"), REASON_LIMIT),
                body=self._body[0] if len(self._body) == 1 else b"".join(self._body),
                truncated=self._size > self._limit,
            )
        )

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()  # what follows on this connection cannot be trusted

    def settle(self) -> None:
        """Ready for the next request (the pool calls this once a response is taken)."""
        self._waiter = None
        self._parser = None


class HttpClient:
    """Sends prepared requests over a pool of at most ``max_connections`` connections.

    Connections are kept alive per origin (scheme, host, port) and reused, the
    most recently used first; one idle for ``idle_timeout`` is closed when
    next seen. When all ``max_connections`` are busy, a request waits for one
    (first come, first served); when the pool is full of idle connections to
    other origins, the longest idle of them is closed to make room.

    The client belongs to the event loop that first uses it; :meth:`close`
    closes every connection, after which it may be used again (in any loop).

    Args:
        max_connections: Connections open at once, idle ones included.
        body_limit: Bytes of a body kept; a longer body is cut there and its
            connection closed rather than read to the end.
        idle_timeout: How long an idle connection is kept for reuse.
        ssl_context: For https; the default verifies certificates against the
            system's CAs.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        body_limit: int = 64 * 1024,
        idle_timeout: timedelta = timedelta(seconds=60),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self.body_limit = body_limit
        self._idle_timeout = idle_timeout.total_seconds()
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        # Every idle connection, longest idle first: eviction takes the first
        # without looking through every origin ever checked.
        self._lru: dict[_Connection, None] = {}
        self._busy: set[_Connection] = set()
        self._open = 0  # connections holding a slot: idle, busy or being made
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def request(self, request: Request) -> Response:
        """Send ``request`` and read its response.

        The caller bounds the time (``asyncio.timeout``); a cancelled request
        closes its connection, which frees its slot at once.

        Raises:
            OSError: the connection could not be made (ssl.SSLError for TLS).
            Disconnected: the server closed the connection mid-response.
            ProtocolError: the answer was not HTTP/1.x.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self._open:
                raise RuntimeError("HttpClient: it belongs to another event loop; close() it first")
            self._loop = loop
        conn, reused = await self._acquire(request)
        try:
            try:
                response = await conn.exchange(request)
            except Disconnected as exc:
                if not (reused and request.idempotent and not exc.received):
                    raise
                # The server closed this idle connection as we picked it:
                # the request never reached it; send it on a new one.
                self._busy.discard(conn)
                conn.counted = False  # its slot goes to the new connection
                conn.close()
                conn = await self._connect(request)
                response = await conn.exchange(request)
        except BaseException:
            self._discard(conn)
            raise
        conn.settle()
        if conn.keep_alive and not response.truncated and conn.open:
            self._busy.discard(conn)
            conn.idle_since = loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            self._lru[conn] = None
            self._wake()
        else:
            self._discard(conn)
        return response

    async def close(self) -> None:
        """Close every connection; waiting requests fail with ``ConnectionError``."""
        for conn in [*self._busy, *(c for conns in self._idle.values() for c in conns)]:
            conn.counted = False
            conn.close()
        self._idle.clear()
        self._lru.clear()
        self._busy.clear()
        self._open = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the http client was closed"))
        self._loop = None
        await asyncio.sleep(0)  # let the transports close

    # internals

    async def _acquire(self, request: Request) -> tuple[_Connection, bool]:
        key = (request.scheme, request.host, request.port)
        while True:
            now = self.loop.time()
            while key in self._idle:
                conn = self._unidle(self._idle[key][-1])
                if conn.open and now - conn.idle_since < self._idle_timeout:
                    self._busy.add(conn)
                    return conn, True
                self._discard(conn)
            if self._open < self.max_connections or self._evict():
                return await self._connect(request, reserve=True), False
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on the turn we were given
                raise

    async def _connect(self, request: Request, *, reserve: bool = False) -> _Connection:
        """A new connection for ``request`` in a slot already held (or ``reserve`` one)."""
        if reserve:
            self._open += 1
        key = (request.scheme, request.host, request.port)
        https = request.scheme == "https"
        if https and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self, key),
                request.host,
                request.port,
                ssl=self._ssl if https else None,
                server_hostname=request.host if https else None,
            )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self._busy.add(conn)
        return conn

    def _evict(self) -> bool:
        """Close the longest idle connection to any origin; False if there is none."""
        if not self._lru:
            return False
        self._discard(self._unidle(next(iter(self._lru))))
        return True

    def _unidle(self, conn: _Connection) -> _Connection:
        """Take ``conn`` off the idle lists (it must be on them)."""
        del self._lru[conn]
        conns = self._idle[conn.key]
        if conns[-1] is conn:
            conns.pop()  # the most recently used: the usual case
        else:
            conns.remove(conn)
        if not conns:
            del self._idle[conn.key]  # origins come and go: keep only those with idle ones
        return conn

    def _discard(self, conn: _Connection) -> None:
        """Close ``conn`` and free its slot now (not when the close completes)."""
        self._busy.discard(conn)
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake()
        conn.close()

    def _lost(self, conn: _Connection) -> None:
        """``conn`` closed (by either side)."""
        if conn in self._lru:
            self._unidle(conn)
        self._busy.discard(conn)
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
