"""The shipped example configs load, and their instances and checks are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrlplane.config import load_config
from ctrlplane.declarations import decl_problems

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))


def test_there_are_examples() -> None:
    assert [p.name for p in EXAMPLES] == ["local.toml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    config = load_config(path, env={})
    assert config.instances
    assert decl_problems(config.instances) == []
    for instance in config.instances:
        assert instance.checks, f"{instance.name} has no checks"
        for check in instance.checks:
            target = check.target or ""
            assert "127.0.0.1" in target or check.type == "command"
