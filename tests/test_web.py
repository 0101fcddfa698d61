"""``/healthz`` and ``/readyz`` of ``ctrlplane run``, on a real control plane and its own NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from ctrlplane import Config, ControlPlane
from ctrlplane.config import load_config
from ctrlplane.errors import ConfigError
from ctrlplane.web import server as web_server
from ctrlplane.web.addr import HttpAddr, parse_http_addr
from ctrlplane.web.server import HTTP_FILE, read_http_url
from tests.helpers import embedded_again, wait_for
from tests.processes import env_for, run_cli, started, stop


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("127.0.0.1:0", HttpAddr("127.0.0.1", 0)),
        ("0.0.0.0:9090", HttpAddr("0.0.0.0", 9090)),
        ("[::1]:8080", HttpAddr("::1", 8080)),
        ("localhost:80", HttpAddr("localhost", 80)),
        ("off", None),
    ],
)
def test_http_addr_forms(text: str, addr: HttpAddr | None) -> None:
    assert parse_http_addr(text) == addr


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8080", "not host:port"),
        (":8080", "not host:port"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:70000", "port must be a number"),
        ("::1:8080", "in brackets"),
        ("[nope]:1", "not an IPv6 address"),
        ("OFF", "not host:port"),
    ],
)
def test_a_bad_http_addr_is_a_config_error_naming_the_field(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        Config(http_addr=text)
    assert info.value.field == "http_addr"


@pytest_asyncio.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane on its own embedded server (which the test may stop)."""
    config = Config(
        data_dir=tmp_path / "data",
        subject_prefix=f"web{uuid.uuid4().hex[:8]}",
        stop_grace=timedelta(seconds=2),
    )
    cp = ControlPlane(config, load_plugins=False)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def get(url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status, await response.json()


async def test_probes_answer_and_the_url_is_in_the_data_dir(plane: ControlPlane) -> None:
    url = plane.http_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert read_http_url(plane.config.data_dir) == url
    assert await get(f"{url}/healthz") == (200, {"status": "ok"})
    assert await get(f"{url}/readyz") == (200, {"status": "ready"})
    await plane.stop()
    assert not (plane.config.data_dir / HTTP_FILE).exists()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{url}/healthz")


async def test_readyz_follows_nats_away_and_back_while_healthz_answers(
    plane: ControlPlane,
) -> None:
    url = plane.http_url
    assert url is not None and plane.server is not None
    port = int(plane.server.info.url.rsplit(":", 1)[1])
    await plane.server.stop()
    answers: list[tuple[int, Any]] = []

    async def readiness(status: int) -> bool:
        answers.append(await get(f"{url}/readyz"))
        return answers[-1][0] == status

    await wait_for(lambda: readiness(503), within=30, interval=0.2)
    _, body = answers[-1]
    assert body["status"] == "not ready"
    assert body["reasons"]["nats"] == "not connected to NATS"
    assert "store" not in body["reasons"]
    # Alive all the same: the process is fine, its broker is not.
    assert await get(f"{url}/healthz") == (200, {"status": "ok"})
    # The broker back on its port (same users): ready again.
    again = embedded_again(plane, port)
    await again.start()
    try:
        await wait_for(lambda: readiness(200), within=30, interval=0.2)
        await plane.stop()
    finally:
        await again.stop()


async def test_healthz_reports_a_blocked_loop_once(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = plane.http_url
    assert url is not None
    monkeypatch.setattr(web_server, "LOOP_STALL", timedelta(seconds=0.3))
    time.sleep(1.5)  # blocks the event loop on purpose: what /healthz must see  # noqa: ASYNC251
    status, body = await get(f"{url}/healthz")
    assert status == 503 and body["reason"].startswith("event loop blocked for ")
    # Reported once: the loop turns again.
    assert await get(f"{url}/healthz") == (200, {"status": "ok"})


async def test_http_addr_off_serves_nothing(tmp_path: Path, config: Config) -> None:
    cfg = msgspec.structs.replace(config, http_addr="off", data_dir=tmp_path / "off")
    async with ControlPlane(cfg, load_plugins=False) as cp:
        assert cp.http_url is None
        assert not (cfg.data_dir / HTTP_FILE).exists()


async def test_a_port_in_use_stops_the_start_naming_http_addr(
    plane: ControlPlane, config: Config, tmp_path: Path
) -> None:
    url = plane.http_url
    assert url is not None
    taken = url.removeprefix("http://")
    cfg = msgspec.structs.replace(config, http_addr=taken, data_dir=tmp_path / "second")
    cp = ControlPlane(cfg, load_plugins=False)
    with pytest.raises(Exception, match="http_addr") as info:
        await cp.start()
    assert taken in str(info.value)
    await wait_for(lambda: not cp.bus.connected, within=10)


async def test_ctrlplane_run_serves_the_probes_and_a_bad_addr_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = await asyncio.to_thread(
        run_cli, ["run", "--http-addr", "nowhere", "--data-dir", str(data)], env_for()
    )
    assert bad.returncode == 2 and "http_addr" in bad.stderr
    with started(
        ["run", "--data-dir", str(data), "--http-addr", "127.0.0.1:0"],
        env_for(),
        tmp_path / "run.log",
    ) as proc:
        await wait_for(lambda: read_http_url(data) is not None, within=30)
        url = read_http_url(data)
        assert url is not None

        async def ready() -> bool:
            return (await get(f"{url}/readyz"))[0] == 200

        await wait_for(ready, within=30, interval=0.2)
        assert url in (tmp_path / "run.log").read_text()
        assert await asyncio.to_thread(stop, proc) == 0
    assert read_http_url(data) is None


def test_http_addr_from_the_environment(tmp_path: Path) -> None:
    env = {"CTRLPLANE_HTTP_ADDR": "off", "HOME": str(tmp_path)}
    assert load_config(env=env).http_addr == "off"
    with pytest.raises(ConfigError) as info:
        load_config(env={**env, "CTRLPLANE_HTTP_ADDR": "8080"})
    assert info.value.field == "http_addr"
