"""The NATS connection's errors never show credentials."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from ctrlplane.bus import Bus, Subjects
from ctrlplane.bus.errors import BusError


@pytest.mark.parametrize(
    ("userinfo", "secret"),
    [("user:pa/ss", "pa/ss"), ("user:p@ss/x", "p@ss/x"), ("tok/en", "tok/en")],
)
async def test_a_password_with_a_slash_or_at_stays_out_of_connect_errors(
    subjects: Subjects, userinfo: str, secret: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = Bus(subjects, name="test")
    with pytest.raises(BusError) as info:
        await bus.connect(
            f"nats://{userinfo}@127.0.0.1:{port}", connect_timeout=timedelta(milliseconds=500)
        )
    assert secret not in str(info.value)
    assert "***@" in str(info.value)
