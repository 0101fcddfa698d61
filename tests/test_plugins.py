"""Loading workers named by ``package.module:Name`` references."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrlplane.errors import WorkerLoadError
from ctrlplane.plugins import load_worker, reference_problem


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for modules made by a test, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.parametrize(
    "ref", ["nocolon", "a..b:C", "a.b:", ":C", "a:b.c", "a:B:C", "1a:B", "a-b:C", "a:class"]
)
def test_a_malformed_reference_is_refused_before_importing(ref: str) -> None:
    assert reference_problem(ref) is not None
    with pytest.raises(WorkerLoadError, match="not a worker reference") as info:
        load_worker(ref)
    assert info.value.ref == ref


def test_loads_a_worker_class(plugin_dir: Path) -> None:
    (plugin_dir / "wk_ok.py").write_text(
        "from datetime import timedelta\n"
        "class Nightly:\n"
        "    name = 'nightly'\n"
        "    interval = timedelta(seconds=5)\n"
        "    async def run(self, ctx): pass\n"
    )
    assert reference_problem("wk_ok:Nightly") is None
    assert load_worker("wk_ok:Nightly").name == "nightly"


def test_a_missing_attribute_is_named(plugin_dir: Path) -> None:
    (plugin_dir / "wk_empty.py").write_text("")
    with pytest.raises(WorkerLoadError, match="'wk_empty' has no attribute 'Missing'"):
        load_worker("wk_empty:Missing")


def test_an_attribute_error_while_importing_is_an_import_failure(plugin_dir: Path) -> None:
    (plugin_dir / "wk_broken.py").write_text("import os\nos.nothing_here\n")
    with pytest.raises(WorkerLoadError, match="cannot import 'wk_broken': AttributeError"):
        load_worker("wk_broken:Worker")


def test_a_missing_module_is_named() -> None:
    with pytest.raises(WorkerLoadError, match="cannot import 'wk_nowhere_at_all'"):
        load_worker("wk_nowhere_at_all:Worker")
