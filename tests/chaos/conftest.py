"""The chaos suite: real nats-server and ``ctrlplane run`` processes, killed on purpose."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos: kills real processes and servers; bounded, part of the default test run",
    )
