"""The HTTP server of ``ctrlplane run`` (aiohttp): the probes ``/healthz`` and ``/readyz``,
``/metrics`` when given, and whatever its mounts add (the status page).

``/healthz`` says the process is alive and its event loop turns: it answers
from the loop, and 503 when the loop was found blocked longer than
``LOOP_STALL`` since the last request. ``/readyz`` says it can do its work:
NATS connected, the store writable, the scheduler started; 503 with the
reasons otherwise. Both answer JSON. The URL is written to
``<data_dir>/http.json`` so that tools on the host find a chosen port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from ctrlplane.files import write_private
from ctrlplane.web.addr import HttpAddr

if TYPE_CHECKING:
    # prometheus-client is loaded by whoever makes the Metrics, not by the probes.
    from ctrlplane.web.metrics import Metrics

log = structlog.get_logger("ctrlplane.web")

HTTP_FILE = "http.json"
"""In the data dir: ``{"url": "http://HOST:PORT"}`` while ``ctrlplane run`` serves HTTP."""

LOOP_STALL = timedelta(seconds=5)
"""A loop that stalled longer than this is reported by ``/healthz``."""

_BEAT = 0.5

Probe = Callable[[], Awaitable[str | None]]
"""A readiness check: None when ready, else why not (one line)."""


class HttpServer:
    """Serves the probes on ``addr`` until :meth:`stop`.

    Args:
        addr: Where to listen.
        data_dir: Where :data:`HTTP_FILE` is written.
        probes: Readiness checks by name (``nats``, ``store``, ``scheduler``).
        metrics: Served at ``/metrics`` when given.
        mounts: Each adds more routes (and startup and shutdown hooks) to the
            application before it serves, e.g. the status page's.
    """

    def __init__(
        self,
        addr: HttpAddr,
        data_dir: Path,
        probes: dict[str, Probe],
        *,
        metrics: Metrics | None = None,
        mounts: Sequence[Callable[[web.Application], None]] = (),
    ) -> None:
        self._mounts = mounts
        self._addr = addr
        self._file = data_dir / HTTP_FILE
        self._probes = probes
        self._runner: web.AppRunner | None = None
        self._beat: asyncio.Task[None] | None = None
        self._stall = 0.0
        self._metrics = metrics
        # Like _stall, but since the last scrape: /healthz and /metrics each
        # see every stall.
        self._lag = 0.0
        self.url = ""

    async def start(self) -> str:
        """Listen, write the URL file, and return the URL (the chosen port filled in)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_text)
        for mount in self._mounts:
            mount(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._addr.host, self._addr.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._addr.host}]" if ":" in self._addr.host else self._addr.host
        self.url = f"http://{host}:{port}"
        write_private(self._file, json.dumps({"url": self.url}).encode())
        self._beat = asyncio.get_running_loop().create_task(self._watch(), name="http-loop-beat")
        return self.url

    async def stop(self) -> None:
        """Stop serving and remove the URL file."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self._file.unlink()

    async def _watch(self) -> None:
        # The longest lateness of a short sleep since the last /healthz: how
        # long the loop could not turn.
        while True:
            before = time.monotonic()
            await asyncio.sleep(_BEAT)
            late = time.monotonic() - before - _BEAT
            self._stall = max(self._stall, late)
            self._lag = max(self._lag, late)

    async def _healthz(self, _: web.Request) -> web.Response:
        stall, self._stall = self._stall, 0.0
        if stall > LOOP_STALL.total_seconds():
            reason = f"event loop blocked for {stall:.1f}s"
            return _json(503, {"status": "unhealthy", "reason": reason})
        return _json(200, {"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        reasons: dict[str, str] = {}
        for name, probe in self._probes.items():
            try:
                async with asyncio.timeout(5):
                    problem = await probe()
            except TimeoutError:
                problem = "no answer within 5s"
            except Exception as exc:  # a probe's failure is a reason, never a 500
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                reasons[name] = problem
        if reasons:
            return _json(503, {"status": "not ready", "reasons": reasons})
        return _json(200, {"status": "ready"})

    async def _metrics_text(self, _: web.Request) -> web.Response:
        assert self._metrics is not None
        lag, self._lag = self._lag, 0.0
        body = await self._metrics.render(loop_lag=lag)
        return web.Response(body=body, headers={"Content-Type": self._metrics.content_type})


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def read_http_url(data_dir: Path) -> str | None:
    """The URL a ``ctrlplane run`` on ``data_dir`` serves HTTP on, if it does."""
    try:
        url = json.loads((data_dir / HTTP_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if isinstance(url, str) else None
