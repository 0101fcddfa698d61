"""The ``http`` check: one request through a shared keep-alive pool (see ``http_client``)."""

from __future__ import annotations

import asyncio
import functools
import ssl

from yarl import URL

from ctrlplane.checks.http_client import Disconnected, HttpClient, ProtocolError, Request, prepare
from ctrlplane.checks.text import REASON_LIMIT, bounded
from ctrlplane.oserrors import describe_os_error
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe

# How much of a failing response's body the message quotes.
_SNIPPET = 200
USER_AGENT = "ctrlplane-health-check"


def _unknown(reason: str) -> Probe:
    return Probe(outcome=Outcome.UNKNOWN, message=bounded(f"http check: {reason}"))


def _request(spec: CheckSpec) -> Request | str:
    """The request to send, or why ``spec`` cannot be executed."""
    return _parse(spec.target, spec.method, spec.expected_status, spec.timeout.total_seconds())


# Every sweep checks the same targets again: parse, validate and encode each once.
@functools.lru_cache(maxsize=65536)
def _parse(
    target: str | None, method: str, expected_status: tuple[int, int], timeout: float
) -> Request | str:
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
    try:
        request = prepare(url, method, USER_AGENT)
    except ValueError as exc:  # the method, or a target that cannot be sent
        return str(exc)
    low, high = expected_status
    if not 100 <= low <= high <= 599:
        return f"expected_status {[low, high]} is not a range of HTTP statuses"
    if timeout <= 0:
        return "the timeout must be positive"
    return request


def _snippet(body: bytes) -> str:
    return " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())[:_SNIPPET]


class HttpChecker:
    """Sends ``spec.method`` to ``spec.target`` (an http or https URL).

    A check passes when the status is within ``spec.expected_status``
    (inclusive). Redirects are **not** followed: the status the instance
    itself answered is judged, so a redirect to a login page on another host
    cannot make a broken instance look healthy (the default range, 200-399,
    lets redirects pass, as Kubernetes probes do).

    Every check shares one :class:`~ctrlplane.checks.http_client.HttpClient`
    that keeps at most ``max_connections`` connections open: more concurrent
    checks than that wait for a free connection (and that wait counts against
    their timeout). It sends no cookies and follows no redirects; https
    certificates are verified against the system's CAs. Call :meth:`close`
    when done; the checker may then be used again, also in another event loop.

    Args:
        max_connections: The size of the connection pool.
    """

    type: str = "http"

    def __init__(self, max_connections: int = 100) -> None:
        self._client = HttpClient(max_connections=max_connections)

    @property
    def max_connections(self) -> int:
        """The size of the connection pool."""
        return self._client.max_connections

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Send one request and judge its status."""
        request = _request(spec)
        if isinstance(request, str):
            return _unknown(request)
        seconds = spec.timeout.total_seconds()
        try:
            async with asyncio.timeout(seconds):
                response = await self._client.request(request)
        except TimeoutError:
            return Probe(outcome=Outcome.FAIL, message=f"timed out after {seconds:g}s")
        except ssl.SSLError as exc:  # before OSError, of which it is one
            return Probe(outcome=Outcome.FAIL, message=bounded(f"TLS error: {exc}"))
        except (Disconnected, ProtocolError) as exc:
            return Probe(outcome=Outcome.FAIL, message=bounded(str(exc)))
        except OSError as exc:
            return Probe(outcome=Outcome.FAIL, message=describe_os_error(exc))
        status = f"{response.status} {bounded(response.reason, REASON_LIMIT)}".rstrip()
        low, high = spec.expected_status
        if low <= response.status <= high:
            return Probe(outcome=Outcome.PASS, message=status)
        snippet = _snippet(response.body)
        return Probe(
            outcome=Outcome.FAIL, message=bounded(f"{status}: {snippet}" if snippet else status)
        )

    async def close(self) -> None:
        """Close the pool's connections."""
        await self._client.close()
