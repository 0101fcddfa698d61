"""The ``http`` check: one request through a shared aiohttp session with a bounded pool.

A health checker talks to whatever targets operators point it at, some
broken, some hostile, so its HTTP is aiohttp's, hardened by the many projects
that use it, tuned down to what a check needs: no cookie jar, no redirects,
no decompression unless asked, a bounded pool, and at most
:data:`BODY_LIMIT` bytes of a body read.
"""

from __future__ import annotations

import functools
import re

import aiohttp
from msgspec import Struct
from yarl import URL

from ctrlplane.checks.text import REASON_LIMIT, bounded
from ctrlplane.oserrors import describe_os_error
from ctrlplane.sessions import LoopSession
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe

BODY_LIMIT = 64 * 1024
"""Bytes of a body read at most; a longer body costs its connection, not a download."""
USER_AGENT = "ctrlplane-health-check"
# How much of a failing response's body the message quotes.
_SNIPPET = 200
# An HTTP method is a token (RFC 9110): nothing that could break the request line.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A check's whole exchange is bounded by its own ``total`` timeout (see _Target);
# no per-phase timers on top.
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)


class _Target(Struct, frozen=True):
    """A check's request, validated once."""

    url: URL
    method: str
    seconds: float
    # aiohttp's one timer for connect, send and read, made once per target:
    # measured, it costs about half of what ``asyncio.timeout`` around the
    # request does (8 against 20 us a check on the benchmark's machine).
    timeout: aiohttp.ClientTimeout


def _unknown(reason: str) -> Probe:
    return Probe(outcome=Outcome.UNKNOWN, message=bounded(f"http check: {reason}"))


def _fail(message: str) -> Probe:
    return Probe(outcome=Outcome.FAIL, message=bounded(message))


def _target(spec: CheckSpec) -> _Target | str:
    """The request to send, or why ``spec`` cannot be executed."""
    return _parse(spec.target, spec.method, spec.expected_status, spec.timeout.total_seconds())


# Every sweep checks the same targets again: parse and validate each once.
@functools.lru_cache(maxsize=65536)
def _parse(
    target: str | None, method: str, expected_status: tuple[int, int], timeout: float
) -> _Target | str:
    if not target or not target.strip():
        return "needs a target URL"
    try:
        url = URL(target.strip())
        port = url.port
    except (ValueError, TypeError) as exc:
        return f"{target!r} is not a URL: {exc}"
    if url.scheme not in ("http", "https"):
        return f"{target!r}: the scheme must be http or https"
    if not url.host or any(c.isspace() or not c.isprintable() for c in url.host):
        return f"{target!r} has no valid host"
    if not port:
        return f"{target!r} has no valid port"
    if any(c.isspace() or not c.isprintable() for c in url.raw_path_qs):
        return f"{target!r}: its path cannot be sent in a request"
    if not _METHOD.fullmatch(method):
        return f"{method!r} is not an HTTP method"
    low, high = expected_status
    if not 100 <= low <= high <= 599:
        return f"expected_status {[low, high]} is not a range of HTTP statuses"
    if timeout <= 0:
        return "the timeout must be positive"
    # Upper-cased after the check: some non-ASCII letters upper-case to ASCII.
    return _Target(
        url=url,
        method=method.upper(),
        seconds=timeout,
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """Up to :data:`BODY_LIMIT` bytes of the body; the rest is not downloaded."""
    length = response.content_length
    if length is not None and length <= BODY_LIMIT:
        return await response.read()  # the common case: one read
    body = bytearray()
    while len(body) <= BODY_LIMIT:
        chunk = await response.content.read(BODY_LIMIT + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    # Too long to read to its end: close the connection rather than reuse it half-read.
    response.close()
    return bytes(body[:BODY_LIMIT])


def _snippet(body: bytes) -> str:
    return " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())[:_SNIPPET]


def _invalid(what: str, exc: aiohttp.ClientError) -> str:
    """``what`` and aiohttp's account of it, on one line (its parser's spans lines)."""
    detail = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    return f"{what}: {' '.join(str(detail or type(exc).__name__).split())}"


class HttpChecker:
    """Sends ``spec.method`` to ``spec.target`` (an http or https URL).

    A check passes when the status is within ``spec.expected_status``
    (inclusive). Redirects are **not** followed: the status the instance
    itself answered is judged, so a redirect to a login page on another host
    cannot make a broken instance look healthy (the default range, 200-399,
    lets redirects pass, as Kubernetes probes do).

    Every check shares one ``aiohttp.ClientSession``, made on first use in the
    running event loop, whose pool keeps at most ``max_connections``
    connections open, at most ``max_per_host`` of them to one origin: more
    concurrent checks than that wait for a free connection (and that wait
    counts against their timeout). The session keeps no cookies, follows no
    redirects, asks for no compression (``decompress=True`` asks for it and
    decodes what comes), verifies https certificates against the system's CAs
    and reads at most :data:`BODY_LIMIT` bytes of a body. Call :meth:`close`
    when done; the checker may then be used again, also in another event loop.

    Args:
        max_connections: The size of the connection pool.
        max_per_host: Connections to one origin (scheme, host, port) at most.
        decompress: Ask for gzip/deflate bodies and decode them (the quoted
            snippet of a failing answer is then readable text either way).
    """

    type: str = "http"

    def __init__(
        self, max_connections: int = 100, *, max_per_host: int = 10, decompress: bool = False
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if max_per_host < 1:
            raise ValueError(f"max_per_host must be at least 1, not {max_per_host}")
        self.max_connections = max_connections
        self.max_per_host = min(max_per_host, max_connections)
        self.decompress = decompress
        self._session = LoopSession("HttpChecker", self._make_session)

    def _make_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_per_host
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            skip_auto_headers=() if self.decompress else ("Accept-Encoding",),
            auto_decompress=self.decompress,
            timeout=_NO_TIMEOUT,
            read_bufsize=BODY_LIMIT,
            raise_for_status=False,
            trust_env=False,
        )

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Send one request and judge its status."""
        target = _target(spec)
        if isinstance(target, str):
            return _unknown(target)
        session = self._session.get()
        try:
            async with session.request(
                target.method, target.url, allow_redirects=False, timeout=target.timeout
            ) as response:
                body = await _read_body(response)
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors
            return Probe(outcome=Outcome.FAIL, message=f"timed out after {target.seconds:g}s")
        except aiohttp.ClientConnectorCertificateError as exc:
            return _fail(f"TLS error: {exc.certificate_error}")
        except aiohttp.ClientConnectorSSLError as exc:
            return _fail(f"TLS error: {exc.os_error}")
        except aiohttp.ClientConnectorError as exc:
            return _fail(describe_os_error(exc.os_error))
        except aiohttp.ServerDisconnectedError:
            return Probe(outcome=Outcome.FAIL, message="server disconnected")
        except aiohttp.ClientResponseError as exc:  # what came back was not HTTP/1.x
            return _fail(_invalid("invalid HTTP response", exc))
        except aiohttp.ClientPayloadError as exc:
            return _fail(_invalid("invalid HTTP response body", exc))
        except aiohttp.InvalidURL as exc:
            return _unknown(f"{spec.target!r} is not a usable URL: {exc}")
        except aiohttp.ClientError as exc:
            return _fail(f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return _fail(describe_os_error(exc))
        status = f"{response.status} {bounded(response.reason or '', REASON_LIMIT)}".rstrip()
        low, high = spec.expected_status
        if low <= response.status <= high:
            return Probe(outcome=Outcome.PASS, message=status)
        snippet = _snippet(body)
        return _fail(f"{status}: {snippet}" if snippet else status)

    async def close(self) -> None:
        """Close the shared session and its connections."""
        await self._session.close()
