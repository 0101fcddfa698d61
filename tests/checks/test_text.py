"""Bounds on the text a check stores."""

from __future__ import annotations

from ctrlplane.checks import (
    CommandChecker,
)
from ctrlplane.checks.text import MESSAGE_LIMIT, bounded
from ctrlplane.store.health import Outcome
from tests.checks.helpers import INSTANCE, PY, spec


def test_bounded_keeps_short_text_and_cuts_long_text_within_the_limit() -> None:
    assert bounded("200 OK") == "200 OK"
    assert bounded("x" * MESSAGE_LIMIT) == "x" * MESSAGE_LIMIT
    for size in (MESSAGE_LIMIT + 1, 10_000, 60_025, 1_000_000):
        cut = bounded("x" * size)
        assert len(cut) <= MESSAGE_LIMIT and cut.endswith(" more characters]")
        kept = cut.index("...")
        assert f"[{size - kept:,} more characters]" in cut


async def test_command_output_that_is_long_is_stored_bounded() -> None:
    code = "import sys; sys.stdout.write('z' * 100_000); sys.exit(1)"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome is Outcome.FAIL and len(probe.message) <= MESSAGE_LIMIT
