"""The control API answers bad requests with a clear error, never an internal one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from ctrlplane.api import DomainApi, Reply
from ctrlplane.bus import Bus
from ctrlplane.inventory import Inventory
from ctrlplane.limits import MAX_LIMIT
from ctrlplane.providers.process import ProcessProvider
from ctrlplane.store import Store


@pytest_asyncio.fixture
async def api(store: Store, bus: Bus, tmp_path: Path) -> AsyncIterator[DomainApi]:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    inventory = Inventory(store, {"process": ProcessProvider(tmp_path / "data")}, bus.publish_event)
    api = DomainApi(bus, store, inventory)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def _ask(bus: Bus, name: str, payload: bytes) -> str | None:
    msg = await bus.nc.request(bus.subjects.api(name), payload, timeout=10)
    return msgspec.json.decode(msg.data, type=Reply).error


@pytest.mark.usefixtures("api")
@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        ("deployments", b'{"limit": 9223372036854775808}', "limit must be at most"),
        ("deployments", f'{{"limit": {2**63 - 1}}}'.encode(), "limit must be at most"),
        ("deployments", b'{"limit": "' + b"9" * 5000 + b'"}', "Expected `int`"),
        ("telemetry", b'{"instance": "web", "since": "P99999999D"}', "since must be between"),
        ("telemetry", b'{"instance": "web", "since": "-P1D"}', "since must be between"),
        ("telemetry", b'{"instance": "web", "since": ' + b"[" * 100_000, "bad request"),
        ("apply", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bad request"),
        ("apply", b"\xff\xfe", "bad request"),
    ],
)
async def test_a_bad_request_gets_a_clear_error(
    bus: Bus, name: str, payload: bytes, problem: str
) -> None:
    error = await _ask(bus, name, payload)
    assert error is not None
    assert "internal error" not in error
    assert error.startswith(f"bad request on {bus.subjects.api(name)}: ")
    assert problem in error
    assert len(error) < 1000


@pytest.mark.usefixtures("api")
async def test_requests_within_the_bounds_are_answered(bus: Bus) -> None:
    assert await _ask(bus, "deployments", f'{{"limit": {MAX_LIMIT}}}'.encode()) is None
    error = await _ask(bus, "telemetry", b'{"instance": "web", "since": "P3650D"}')
    assert error == "no instance 'web'"
