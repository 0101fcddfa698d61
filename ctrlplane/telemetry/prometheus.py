"""The built-in ``prometheus`` collector: scrapes an instance's ``metrics_url``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from ctrlplane.oserrors import describe_os_error
from ctrlplane.sessions import LoopSession
from ctrlplane.store.instances import Instance
from ctrlplane.store.telemetry import Metric, MetricType, ResourceSnapshot
from ctrlplane.telemetry.errors import CollectorError

__all__ = ["PrometheusCollector", "parse_exposition"]

# Ask for the classic text format, which is what the parser reads.
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"
# Above this size the text is parsed in a thread, off the event loop.
_PARSE_INLINE = 64 * 1024

# Prometheus family types to ours. A summary, like a histogram, describes a
# distribution; types with no counterpart (untyped, info, stateset) are gauges.
_TYPES = {
    "counter": MetricType.COUNTER,
    "gauge": MetricType.GAUGE,
    "histogram": MetricType.HISTOGRAM,
    "gaugehistogram": MetricType.HISTOGRAM,
    "summary": MetricType.HISTOGRAM,
}


def parse_exposition(text: str, time: datetime) -> list[Metric]:
    """The samples of a Prometheus text exposition, as metrics collected at ``time``.

    Each sample keeps its own name and labels: a counter's ``requests_total``,
    a histogram's ``latency_seconds_bucket`` (with ``le``), ``_sum`` and
    ``_count``, a summary's quantiles (with ``quantile``). Timestamps in the
    text are ignored: every sample is dated ``time``, the scrape.

    Raises:
        ValueError: the text is not in the Prometheus text format.
    """
    metrics: list[Metric] = []
    # The parser is a generator: errors surface while it is consumed.
    for family in text_string_to_metric_families(text):
        kind = _TYPES.get(family.type, MetricType.GAUGE)
        for sample in family.samples:
            metrics.append(
                Metric(
                    name=sample.name,
                    type=kind,
                    value=float(sample.value),
                    labels=dict(sample.labels),
                    time=time,
                )
            )
    return metrics


class PrometheusCollector:
    """Scrapes each instance's ``spec.metrics_url`` (the Prometheus text format).

    Every sample becomes a metric with its labels (see :func:`parse_exposition`);
    an instance without a ``metrics_url`` has none. An endpoint that cannot
    be reached, answers other than 2xx, sends more than ``max_bytes`` or text
    that does not parse is an error of this collector for that instance.

    All scrapes share one ``aiohttp.ClientSession``, created on first use in
    the running event loop, whose connector holds at most ``max_connections``
    connections. Call :meth:`close` when done.

    Args:
        timeout: How long one scrape may take, connecting and reading included.
        max_connections: The size of the connection pool.
        max_bytes: The largest exposition read.
    """

    name = "prometheus"

    def __init__(
        self,
        *,
        timeout: timedelta = timedelta(seconds=5),
        max_connections: int = 32,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_bytes = max_bytes
        self._session = LoopSession(
            "PrometheusCollector",
            lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "ctrlplane-telemetry", "Accept": _ACCEPT},
                timeout=aiohttp.ClientTimeout(total=timeout.total_seconds()),
            ),
        )

    async def collect_metrics(self, instance: Instance) -> list[Metric]:
        """Scrape the instance's ``metrics_url``; ``[]`` when it has none.

        Raises:
            CollectorError: the scrape failed or the text does not parse.
        """
        url = instance.spec.metrics_url
        if not url:
            return []
        text = await self._scrape(instance, url)
        time = datetime.now(UTC)
        try:
            if len(text) > _PARSE_INLINE:
                return await asyncio.to_thread(parse_exposition, text, time)
            return parse_exposition(text, time)
        except Exception as exc:  # the parser raises ValueError, and more for odd input
            raise CollectorError(
                self.name, instance.name, f"{url}: not the Prometheus text format: {exc}"
            ) from exc

    async def collect_resources(self, instance: Instance) -> ResourceSnapshot | None:
        """None: this collector gives metrics only."""
        return None

    async def _scrape(self, instance: Instance, url: str) -> str:
        def fail(reason: str) -> CollectorError:
            return CollectorError(self.name, instance.name, f"{url}: {reason}")

        try:
            target = URL(url)
        except (ValueError, TypeError) as exc:
            raise fail(f"not a URL: {exc}") from exc
        if target.scheme not in ("http", "https") or not target.host:
            raise fail("not an http(s) URL")
        try:
            async with self._session.get().get(target, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    raise fail(f"HTTP {response.status} {response.reason or ''}".rstrip())
                body = bytearray()
                while chunk := await response.content.read(self.max_bytes + 1 - len(body)):
                    body += chunk
                    if len(body) > self.max_bytes:
                        response.close()  # not worth draining: drop the connection
                        raise fail(f"the exposition is larger than {self.max_bytes} bytes")
                charset = response.charset or "utf-8"
        except TimeoutError:
            raise fail(f"timed out after {self.timeout.total_seconds():g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise fail(describe_os_error(exc.os_error)) from exc
        except aiohttp.ClientError as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise fail(describe_os_error(exc)) from exc
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise fail(f"the body is not {charset} text: {exc}") from exc

    async def close(self) -> None:
        """Close the shared session and its connections."""
        await self._session.close()
