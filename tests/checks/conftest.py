"""Fixtures every checker test may use."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.checks.helpers import children


@pytest.fixture
def closed_port() -> int:
    """A port that was bound on 127.0.0.1 and closed again: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Iterator[None]:
    """Every check reaps what it started."""
    before = children()
    yield
    assert children() - before == set()
