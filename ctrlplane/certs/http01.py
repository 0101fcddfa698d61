"""Answering ACME http-01 challenges: a small web server, and a webroot for a proxy to serve."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from ctrlplane.files import private_dir, write_private

log = structlog.get_logger("ctrlplane.certs")

PATH = "/.well-known/acme-challenge/"


class Http01Responder:
    """Serves ``/.well-known/acme-challenge/<token>`` while challenges are pending.

    The server listens only while at least one challenge is pending. If it
    cannot bind (a reverse proxy holds port 80, or the port is privileged),
    challenges are still written to ``webroot``: point the proxy's
    ``/.well-known/acme-challenge/`` at ``<webroot>/.well-known/acme-challenge/``.

    Args:
        host: The address to listen on; ``None`` for the webroot only.
        port: The port the CA connects to (80 for a public CA).
        webroot: Where to write challenge files too; ``None`` for none.
    """

    def __init__(self, host: str | None, port: int = 80, *, webroot: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.webroot = webroot
        self.served = 0
        """How many challenge requests were answered (for tests and logs)."""
        self._tokens: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def serving(self, token: str, key_authorization: str) -> AsyncIterator[None]:
        """Answer ``token`` with ``key_authorization`` inside the block.

        Raises:
            OSError: the server cannot listen and there is no webroot.
        """
        async with self._lock:
            if not self._tokens:
                await self._start()
            self._tokens[token] = key_authorization
            if self.webroot is not None:
                # fsync'd: off the event loop.
                await asyncio.to_thread(self._write, token, key_authorization)
        try:
            yield
        finally:
            async with self._lock:
                self._tokens.pop(token, None)
                if self.webroot is not None:
                    await asyncio.to_thread(self._delete, token)
                if not self._tokens:
                    await self._stop()

    def _write(self, token: str, key_authorization: str) -> None:
        assert self.webroot is not None
        folder = self.webroot / PATH.strip("/")
        private_dir(folder)
        write_private(folder / token, key_authorization.encode())

    def _delete(self, token: str) -> None:
        assert self.webroot is not None
        with contextlib.suppress(FileNotFoundError):
            (self.webroot / PATH.strip("/") / token).unlink()

    async def _start(self) -> None:
        if self.host is None:
            return
        app = web.Application()
        app.router.add_get(PATH + "{token}", self._answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            if self.webroot is None:
                raise
            log.warning(
                "http-01 responder cannot listen; relying on the webroot",
                address=f"{self.host}:{self.port}",
                error=str(exc),
                webroot=str(self.webroot),
            )
            return
        self._runner = runner

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        answer = self._tokens.get(request.match_info["token"])
        if answer is None:
            return web.Response(status=404, text="no such challenge")
        self.served += 1
        return web.Response(text=answer, content_type="application/octet-stream")
