"""The ``http`` check: one request through a shared aiohttp session with a bounded pool."""

from __future__ import annotations

import functools
import re

import aiohttp
from yarl import URL

from ctrlplane.checks.tcp import describe_os_error
from ctrlplane.sessions import LoopSession
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe

# A body is read (so the connection goes back to the pool) up to this size;
# a larger one costs a connection instead of a download.
_BODY_LIMIT = 64 * 1024
# How much of a failing response's body the message quotes.
_SNIPPET = 200
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _unknown(reason: str) -> Probe:
    return Probe(outcome=Outcome.UNKNOWN, message=f"http check: {reason}")


def _url(spec: CheckSpec) -> URL | str:
    """The URL to check, or why ``spec`` cannot be executed."""
    return _parse(spec.target, spec.method, spec.expected_status, spec.timeout.total_seconds())


# Every sweep checks the same targets again: parse and validate each once.
@functools.lru_cache(maxsize=65536)
def _parse(
    target: str | None, method: str, expected_status: tuple[int, int], timeout: float
) -> URL | str:
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
    if not _METHOD.fullmatch(method):
        return f"{method!r} is not an HTTP method"
    low, high = expected_status
    if not 100 <= low <= high <= 599:
        return f"expected_status {[low, high]} is not a range of HTTP statuses"
    if timeout <= 0:
        return "the timeout must be positive"
    return url


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """Up to ``_BODY_LIMIT`` bytes of the body; the rest is not downloaded."""
    length = response.content_length
    if length is not None and length <= _BODY_LIMIT:
        return await response.read()  # the common case: one read
    body = bytearray()
    while len(body) <= _BODY_LIMIT:
        chunk = await response.content.read(_BODY_LIMIT + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    # Too large to drain: close the connection rather than reuse it half-read.
    response.close()
    return bytes(body[:_BODY_LIMIT])


def _snippet(body: bytes) -> str:
    return " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())[:_SNIPPET]


class HttpChecker:
    """Sends ``spec.method`` to ``spec.target`` (an http or https URL).

    A check passes when the status is within ``spec.expected_status``
    (inclusive). Redirects are **not** followed: the status the instance
    itself answered is judged, so a redirect to a login page on another host
    cannot make a broken instance look healthy (the default range, 200-399,
    lets redirects pass, as Kubernetes probes do).

    Every check shares one ``aiohttp.ClientSession``, created on first use in
    the running event loop, whose connector holds at most ``max_connections``
    connections: more concurrent checks than that wait for a free connection
    (and that wait counts against their timeout). The session has no cookie
    jar, so no check sees another's cookies. Call :meth:`close` when done; the
    checker may then be used again, also in another event loop.

    Args:
        max_connections: The size of the connection pool.
    """

    type: str = "http"

    def __init__(self, max_connections: int = 100) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self._session = LoopSession(
            "HttpChecker",
            lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "ctrlplane-health-check"},
            ),
        )

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Send one request and judge its status."""
        url = _url(spec)
        if isinstance(url, str):
            return _unknown(url)
        seconds = spec.timeout.total_seconds()
        session = self._session.get()
        try:
            async with session.request(
                spec.method,
                url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                body = await _read_body(response)
        except TimeoutError:
            return Probe(outcome=Outcome.FAIL, message=f"timed out after {seconds:g}s")
        except aiohttp.ClientSSLError as exc:
            return Probe(outcome=Outcome.FAIL, message=f"TLS error: {exc}")
        except aiohttp.ClientConnectorError as exc:
            return Probe(outcome=Outcome.FAIL, message=describe_os_error(exc.os_error))
        except aiohttp.InvalidURL as exc:
            return _unknown(f"{spec.target!r} is not a usable URL: {exc}")
        except aiohttp.ServerDisconnectedError:
            return Probe(outcome=Outcome.FAIL, message="server disconnected")
        except aiohttp.ClientError as exc:
            return Probe(outcome=Outcome.FAIL, message=f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return Probe(outcome=Outcome.FAIL, message=describe_os_error(exc))
        status = f"{response.status} {response.reason or ''}".rstrip()
        low, high = spec.expected_status
        if low <= response.status <= high:
            return Probe(outcome=Outcome.PASS, message=status)
        snippet = _snippet(body)
        return Probe(outcome=Outcome.FAIL, message=f"{status}: {snippet}" if snippet else status)

    async def close(self) -> None:
        """Close the shared session and its connections."""
        await self._session.close()
