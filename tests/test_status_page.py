"""The status page of ``ctrlplane run``: ``/``, ``/api/status``, ``/events``, in a real browser too.

Every test runs a real control plane on the session's nats-server with its
SQLite store, serving HTTP on 127.0.0.1 on a port the kernel chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from ctrlplane import Config, ControlPlane
from ctrlplane.actors.control import WorkersReply, WorkersRequest
from ctrlplane.actors.info import WorkerInfo, WorkerKind
from ctrlplane.api.service import ApiService
from ctrlplane.app import _BUILTIN_WORKERS
from ctrlplane.bus.messages import Event
from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.store.health import CheckSpec
from ctrlplane.web.feed import Reader
from ctrlplane.web.page import STATIC_FILES, StatusPage
from tests.helpers import reap_instances, wait_for

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUILTIN_NAMES = sorted(w.name for w in _BUILTIN_WORKERS)
TIMEOUT = aiohttp.ClientTimeout(total=15)


@pytest_asyncio.fixture
async def plane(config: Config) -> AsyncIterator[ControlPlane]:
    """A started control plane serving HTTP on 127.0.0.1 (a chosen port)."""
    cp = ControlPlane(msgspec.structs.replace(config, http_addr="127.0.0.1:0"), load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest_asyncio.fixture
async def fleet(config: Config) -> AsyncIterator[ControlPlane]:
    """A started control plane with an instance, a health check and a domain,
    so that every table of the page has rows to render."""
    cfg = msgspec.structs.replace(
        config,
        http_addr="127.0.0.1:0",
        reconcile_interval=timedelta(seconds=1),
        health_interval=timedelta(seconds=1),
        instances=[
            InstanceDecl(
                name="web",
                command=[sys.executable, "-c", "import time; time.sleep(120)"],
                checks=[
                    CheckSpec(name="alive", type="command", command=[sys.executable, "-c", "pass"])
                ],
            )
        ],
        domains=[DomainDecl(hostname="app.example.test", instance="web")],
    )
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()
        reap_instances([cp])


def _url(cp: ControlPlane) -> str:
    assert cp.http_url is not None
    return cp.http_url


def _page(cp: ControlPlane) -> StatusPage:
    assert cp.status_page is not None
    return cp.status_page


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        return await response.json()


async def test_a_reader_keeps_the_newest_events_when_it_falls_behind() -> None:
    reader = Reader(3)
    dropped = [reader.put(f"e{i}".encode()) for i in range(5)]
    assert dropped == [False, False, False, True, True]
    assert reader.dropped == 2
    assert await reader.take(timedelta(seconds=1)) == [b"e2", b"e3", b"e4"]


async def test_a_reader_waits_for_an_event_and_ends_when_closed() -> None:
    reader = Reader(4)
    with pytest.raises(TimeoutError):
        await reader.take(timedelta(milliseconds=50))
    waiting = asyncio.create_task(reader.take(timedelta(seconds=10)))
    await asyncio.sleep(0)
    reader.put(b"e1")
    async with asyncio.timeout(5):
        assert await waiting == [b"e1"]
    reader.put(b"e2")
    reader.close()
    assert await reader.take(timedelta(seconds=10)) == []


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    plane: ControlPlane,
) -> None:
    url = _url(plane)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(f"{url}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            html = await response.text()
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert '<meta name="viewport"' in html
        # Nothing loaded from elsewhere: every src and href is relative to the page.
        refs = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert refs and all(re.fullmatch(r"[a-z/_.]+", ref) and "//" not in ref for ref in refs)
        for name, content_type in STATIC_FILES.items():
            if name == "index.html":
                continue
            assert f"static/{name}" in html
            async with session.get(f"{url}/static/{name}") as response:
                assert response.status == 200
                assert response.content_type == content_type
                assert await response.read()
        for missing in ("nosuch.js", "index.html", "..%2fpage.py"):
            async with session.get(f"{url}/static/{missing}") as response:
                assert response.status == 404


def _elsewhere(plane: ControlPlane, worker: WorkerInfo) -> ApiService:
    """Another process on the same bus, answering the scatter ``workers`` request too."""

    async def workers(_: WorkersRequest) -> WorkersReply:
        return WorkersReply(process=worker.process, workers=[worker])

    return ApiService(plane.bus, {"workers": workers})


async def test_api_status_shows_every_process_workers_nodes_and_no_problems(
    plane: ControlPlane,
) -> None:
    other = WorkerInfo(
        name="mailer",
        interval=timedelta(minutes=5),
        kind=WorkerKind.PERIODIC,
        process="elsewhere:42",
        last_error="smtp: <refused>",
        error_count=2,
    )
    second = _elsewhere(plane, other)
    await second.start()
    try:
        status = await _get_json(f"{_url(plane)}/api/status")
    finally:
        await second.stop()
    process = plane.scheduler.process
    assert status["process"] == process
    assert status["node"] == plane.config.node
    mine = sorted(w["name"] for w in status["workers"] if w["process"] == process)
    assert mine == BUILTIN_NAMES
    (theirs,) = [w for w in status["workers"] if w["process"] == "elsewhere:42"]
    assert theirs["name"] == "mailer"
    assert theirs["interval"] == 300.0  # durations are seconds, as in the API
    assert theirs["last_error"] == "smtp: <refused>"
    assert "next_run" not in theirs  # absent, never null
    assert [n["name"] for n in status["nodes"]] == [plane.config.node]
    assert status["nodes"][0]["live"] is True
    assert status["instances"] == [] and status["checks"] == [] and status["certs"] == []
    assert "problems" not in status


async def test_api_status_names_a_part_that_failed_and_shows_the_rest(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrlplane.api.domain import DomainApi

    async def broken(self: DomainApi, request: object) -> object:
        raise RuntimeError("certificates table unreadable")

    monkeypatch.setattr(DomainApi, "certs", broken)
    status = await _get_json(f"{_url(plane)}/api/status")
    assert status["problems"] == {"certs": "RuntimeError: certificates table unreadable"}
    assert sorted({w["name"] for w in status["workers"]}) == BUILTIN_NAMES


async def test_pages_polling_at_once_share_one_gathering(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrlplane.api.client import list_workers

    asked: list[int] = []

    async def counting(*args: Any, **kwargs: Any) -> list[WorkersReply]:
        asked.append(1)
        return await list_workers(*args, **kwargs)

    monkeypatch.setattr("ctrlplane.web.status.list_workers", counting)
    url = f"{_url(plane)}/api/status"
    answers = await asyncio.gather(*(_get_json(url) for _ in range(8)))
    assert len(asked) == 1
    assert len({a["generated"] for a in answers}) == 1


async def _sse_lines(response: aiohttp.ClientResponse, out: asyncio.Queue[str]) -> None:
    async for raw in response.content:
        out.put_nowait(raw.decode().rstrip("\n"))


async def _next_line(lines: asyncio.Queue[str], starting: str) -> str:
    async with asyncio.timeout(15):
        while True:
            line = await lines.get()
            if line.startswith(starting):
                return line


async def test_events_stream_an_event_published_on_the_bus(plane: ControlPlane) -> None:
    page = _page(plane)
    page.heartbeat = timedelta(milliseconds=100)
    lines: asyncio.Queue[str] = asyncio.Queue()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{_url(plane)}/events") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        reading = asyncio.create_task(_sse_lines(response, lines))
        try:
            assert await _next_line(lines, "retry:") == "retry: 3000"
            await wait_for(lambda: page.feed.readers == 1)
            # A quiet stream sends comments, so proxies keep it and gone clients are noticed.
            assert await _next_line(lines, ":") == ": keep-alive"
            event = Event(
                source="test",
                type="page.test",
                subject="line one\nline two",
                data={"note": "</script><b>x</b>"},
            )
            await plane.bus.publish_event(event)
            line = await _next_line(lines, "data:")
        finally:
            reading.cancel()
            await asyncio.wait([reading])
    got = json.loads(line.removeprefix("data: "))
    # One line of JSON per event, whatever it holds: a newline cannot end it early.
    assert got["id"] == event.id and got["type"] == "page.test"
    assert got["subject"] == "line one\nline two"
    assert got["data"] == {"note": "</script><b>x</b>"}
    await wait_for(lambda: page.feed.readers == 0)


async def test_a_new_reader_is_given_the_latest_events_and_junk_is_skipped(
    plane: ControlPlane,
) -> None:
    page = _page(plane)
    event = Event(source="test", type="page.earlier")
    await plane.bus.publish_event(event)
    await plane.bus.nc.publish(plane.bus.subjects.event("page.junk"), b"not json")
    await plane.bus.nc.flush()
    await wait_for(lambda: page.feed.undecodable == 1)
    lines: asyncio.Queue[str] = asyncio.Queue()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{_url(plane)}/events") as response,
    ):
        reading = asyncio.create_task(_sse_lines(response, lines))
        try:
            line = await _next_line(lines, "data:")
        finally:
            reading.cancel()
            await asyncio.wait([reading])
    assert json.loads(line.removeprefix("data: "))["id"] == event.id


async def test_slow_and_gone_clients_neither_grow_memory_nor_hold_the_stop(
    plane: ControlPlane,
) -> None:
    page = _page(plane)
    page.heartbeat = timedelta(milliseconds=100)
    # Longer than the test may take: only closing the streams at stop ends a blocked write.
    page.write_timeout = timedelta(minutes=5)
    host, port = _url(plane).removeprefix("http://").rsplit(":", 1)
    request = f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small window, so that the server's writes block soon on a client
        # that reads nothing.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request)
        return sock

    gone = connect()
    await wait_for(lambda: page.feed.readers == 1)
    gone.close()
    # Its stream notices at the next heartbeat and leaves.
    await wait_for(lambda: page.feed.readers == 0)

    slow = connect()
    try:
        await wait_for(lambda: page.feed.readers == 1)
        subject = plane.bus.subjects.event("page.bulk")
        filler = "x" * 32_000
        sent = 0
        # Core publishes (the page's subscription is a core one), until the
        # stream is blocked writing and its queue has dropped the oldest.
        while page.feed.dropped == 0:
            assert sent < 5_000, "the slow client's queue never filled"
            for _ in range(50):
                payload = msgspec.json.encode(
                    {
                        "specversion": "1.0",
                        "id": f"bulk-{sent}",
                        "source": "test",
                        "type": "page.bulk",
                        "time": "2026-01-01T00:00:00Z",
                        "datacontenttype": "application/json",
                        "data": {"filler": filler},
                    }
                )
                await plane.bus.nc.publish(subject, payload)
                sent += 1
            await plane.bus.nc.flush()
            await asyncio.sleep(0.05)
        started = time.monotonic()
        async with asyncio.timeout(30):
            await plane.stop()
        # aiohttp would wait 60 s for a stream that never ends by itself.
        assert time.monotonic() - started < 10
        assert page.feed.readers == 0
    finally:
        slow.close()


def _browser_or_skip() -> Any:
    """Playwright's async API, or a skip (a failure under CI) naming what is missing."""
    missing = []
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import async_api
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        why = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return async_api


def _collect_errors(page: Any, label: str, into: list[str]) -> None:
    """Note every console error and uncaught exception of ``page`` in ``into``."""

    def console(message: Any) -> None:
        if message.type == "error":
            into.append(f"{label}console error: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: into.append(f"{label}page error: {error}"))


async def test_the_page_in_a_real_browser_shows_workers_and_live_events(
    fleet: ControlPlane, tmp_path: Path
) -> None:
    async_api = _browser_or_skip()
    plane = fleet
    url = _url(plane)
    problems: list[str] = []
    failing = WorkerInfo(
        name="mailer",
        interval=timedelta(minutes=5),
        kind=WorkerKind.PERIODIC,
        process="elsewhere:42",
        last_error="<i>smtp</i> refused",
        last_error_at=datetime.now(UTC),
        error_count=3,
        dead_letter_count=1,
    )
    second = _elsewhere(plane, failing)
    await second.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(second.stop)
        playwright = await stack.enter_async_context(async_api.async_playwright())
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=BROWSER_FLAGS, timeout=60_000
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            _collect_errors(page, "", problems)
            await page.goto(f"{url}/", wait_until="load", timeout=30_000)
            names = [*BUILTIN_NAMES, "mailer"]
            await page.wait_for_function(
                """names => names.every(name => [...document.querySelectorAll(
                    '#workers td[data-col="name"]')].some(td => td.textContent === name))""",
                arg=names,
                timeout=30_000,
            )
            rows = await page.eval_on_selector_all(
                "#workers tbody tr",
                """trs => trs.map(tr => [
                    tr.querySelector('[data-col="name"]').textContent,
                    tr.querySelector('[data-col="process"]').textContent])""",
            )
            mine = sorted(n for n, p in rows if p == plane.scheduler.process)
            assert mine == BUILTIN_NAMES
            assert ["mailer", "elsewhere:42"] in rows
            mailer = page.locator("#workers tbody tr", has_text="mailer")
            assert "<i>smtp</i> refused (" in (await mailer.text_content() or "")
            assert await page.locator("#workers i").count() == 0
            assert (await page.text_content("#connection")) == "live"
            await page.wait_for_function(
                "() => document.querySelector('#nodes td[data-col=\"name\"]') !== null",
                timeout=30_000,
            )
            assert (await page.text_content('#nodes td[data-col="name"]')) == plane.config.node
            # The instance running and healthy, its check passing, its certificate issued.
            await page.wait_for_function(
                """() => {
                    const text = (sel) => [...document.querySelectorAll(sel)]
                        .map(e => e.textContent).join(" ");
                    return text("#instances tbody tr").includes("running")
                        && text("#instances tbody tr").includes("healthy")
                        && text("#checks tbody tr").includes("alive (command)")
                        && text("#certs tbody tr").includes("app.example.test")
                        && text("#certs tbody tr").includes("in 89d");
                }""",
                timeout=60_000,
            )
            # The stream is open (its reader joined) before the event is sent.
            page_state = _page(plane)
            await wait_for(lambda: page_state.feed.readers == 1, within=30)
            event = Event(
                source="test.browser",
                type="page.shown",
                subject="<b>bold</b> & <img src=x onerror=alert(1)>",
                data={"note": "</script>"},
            )
            await plane.bus.publish_event(event)
            item = page.locator('#events li[data-type="page.shown"]')
            await item.wait_for(timeout=30_000)
            # Shown as text, never as markup.
            assert (await item.locator(".subject").text_content()) == event.subject
            assert await page.locator("#events b, #events img").count() == 0
            await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

            phone = await browser.new_page(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
            )
            _collect_errors(phone, "phone ", problems)
            await phone.goto(f"{url}/", wait_until="load", timeout=30_000)
            await phone.wait_for_selector('#workers td[data-col="name"]', timeout=30_000)
            await phone.locator('#events li[data-type="page.shown"]').wait_for(timeout=30_000)
            # Cards, not a table wider than the screen.
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            await phone.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
        finally:
            await browser.close()
    assert problems == []
    assert (tmp_path / "status.png").stat().st_size > 0
    assert (tmp_path / "status-phone.png").stat().st_size > 0
