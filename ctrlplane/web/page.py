"""The live status page of ``ctrlplane run``: ``/``, its static files, ``/api/status``, ``/events``.

The page is plain HTML, CSS and JavaScript shipped in the package
(``ctrlplane/web/static``) and served by the process itself: no build step,
nothing loaded from elsewhere (its Content-Security-Policy allows this
origin only). It polls ``/api/status`` (:mod:`ctrlplane.web.status`) and
follows ``/events``, server-sent events fed by :class:`~ctrlplane.web.feed.EventFeed`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from importlib import resources

from aiohttp import web

from ctrlplane.api.wire import encode_body
from ctrlplane.web.feed import EventFeed, Reader
from ctrlplane.web.status import StatusSource

__all__ = ["STATIC_FILES", "StatusPage"]

STATIC_FILES: dict[str, str] = {
    "index.html": "text/html",
    "status.css": "text/css",
    "status.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
"""The files of ``ctrlplane/web/static`` and their content types: all the page loads."""

_HEADERS = {
    # Everything from this origin, nothing inline: a value that slipped into
    # the markup still could not run.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release's page must not be mixed with an old one's script.
    "Cache-Control": "no-cache",
}


class StatusPage:
    """The page's routes, added to the HTTP server's application by :meth:`mount`.

    Args:
        source: Gathers ``/api/status``.
        feed: The events ``/events`` streams.
        heartbeat: How often a quiet ``/events`` stream sends a comment, so
            that proxies and browsers keep it open and a gone client is noticed.
        write_timeout: How long one write to an ``/events`` client may block
            before the client is dropped as stuck.
    """

    def __init__(
        self,
        source: StatusSource,
        feed: EventFeed,
        *,
        heartbeat: timedelta = timedelta(seconds=15),
        write_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self._source = source
        self._feed = feed
        self.heartbeat = heartbeat
        """How often a quiet stream sends a comment; read before each wait."""
        self.write_timeout = write_timeout
        """How long one write may block before the client is dropped; read before each write."""
        self._streams: dict[Reader, web.Request] = {}
        static = resources.files("ctrlplane.web") / "static"
        self._files = {name: (static / name).read_bytes() for name in STATIC_FILES}

    @property
    def feed(self) -> EventFeed:
        """The events ``/events`` streams."""
        return self._feed

    def mount(self, app: web.Application) -> None:
        """Add the routes to ``app``, and follow the events while it serves."""
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/events", self._events)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_startup(self, _: web.Application) -> None:
        await self._feed.start()

    async def _on_shutdown(self, _: web.Application) -> None:
        # Before aiohttp waits for handlers to finish: an /events stream never
        # does by itself, and one blocked writing to a client that stopped
        # reading would hold the stop for the server's whole shutdown timeout.
        self._feed.close_readers()
        for request in list(self._streams.values()):
            if request.transport is not None:
                request.transport.abort()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self._feed.stop()
        await self._source.close()

    async def _index(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(
            body=self._files[name],
            content_type=STATIC_FILES[name],
            charset=None if name.endswith(".svg") else "utf-8",
            headers=_HEADERS,
        )

    async def _status(self, _: web.Request) -> web.Response:
        status = await self._source.status()
        return web.Response(
            body=encode_body(status),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                # A buffering proxy (nginx) would hold the events back.
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        reader = self._feed.join()
        self._streams[reader] = request
        try:
            # The browser's reconnection delay after the stream breaks.
            await self._write(request, response, b"retry: 3000\n\n")
            while True:
                try:
                    items = await reader.take(self.heartbeat)
                except TimeoutError:
                    chunk = b": keep-alive\n\n"
                else:
                    if reader.closed:
                        break
                    chunk = b"".join(b"data: " + item + b"\n\n" for item in items)
                await self._write(request, response, chunk)
        except ConnectionError:
            pass  # the client went away: nothing more to send it
        finally:
            del self._streams[reader]
            self._feed.leave(reader)
        return response

    async def _write(
        self, request: web.Request, response: web.StreamResponse, chunk: bytes
    ) -> None:
        try:
            async with asyncio.timeout(self.write_timeout.total_seconds()):
                await response.write(chunk)
        except TimeoutError:
            # A client that takes nothing for this long is stuck, not slow.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the client took nothing in time") from None
