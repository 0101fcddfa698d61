"""Names that become subjects, folders and log lines are matched as whole strings."""

from __future__ import annotations

import pytest

from ctrlplane.bus.subjects import (
    is_valid_event_pattern,
    is_valid_event_type,
    is_valid_prefix,
    is_valid_token,
)
from ctrlplane.declarations import InstanceDecl, decl_problems


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_a_trailing_newline_or_control_character_is_refused(suffix: str) -> None:
    assert is_valid_token("nl") and not is_valid_token("nl" + suffix)
    assert is_valid_prefix("acme.prod") and not is_valid_prefix("acme.prod" + suffix)
    assert is_valid_event_type("health.failed") and not is_valid_event_type(
        "health.failed" + suffix
    )
    assert is_valid_event_pattern("health.*") and not is_valid_event_pattern("health.*" + suffix)
    assert is_valid_event_pattern("health.>") and not is_valid_event_pattern("health.>" + suffix)


def test_an_instance_named_with_a_newline_is_refused() -> None:
    decl = InstanceDecl(name="nl\n", provider="process", command=["true"])
    assert [field for field, _ in decl_problems([decl])] == ["instances[0].name"]
