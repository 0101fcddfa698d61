"""The dependency direction: ctrlplane -> actors -> bus, ctrlplane -> store.

Checked on the source with ``ast`` (every import, at module level or inside
functions and ``TYPE_CHECKING`` blocks), not through ``sys.modules``: the
``ctrlplane`` package itself imports everything, so an import of
``ctrlplane.actors`` says nothing about what ``actors`` needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ctrlplane

ROOT = Path(ctrlplane.__file__).resolve().parent

# Leaf modules below every layer: the standard library only (checked below),
# so any package may use them without depending on another layer.
NEUTRAL = {"files", "lazy", "oserrors", "text"}

ALLOWED = {
    "actors": {"actors", "bus", *NEUTRAL},
    "bus": {"bus", *NEUTRAL},
    "store": {"store", *NEUTRAL},
}


def _ctrlplane_imports(path: Path) -> set[str]:
    """The ``ctrlplane`` subpackages (or modules) that ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "ctrlplane":
                names = [f"ctrlplane.{alias.name}" for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("ctrlplane.")}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_layer_allows(package: str) -> None:
    modules = sorted((ROOT / package).resolve().glob("*.py"))
    assert modules, f"no modules found in {package}"
    wrong = {
        str(m.name): sorted(bad)
        for m in modules
        if (bad := _ctrlplane_imports(m) - ALLOWED[package])
    }
    assert wrong == {}


@pytest.mark.parametrize("module", sorted(NEUTRAL))
def test_a_neutral_module_imports_nothing_of_ctrlplane(module: str) -> None:
    assert _ctrlplane_imports(ROOT / f"{module}.py") == set()


def test_the_scan_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ctrlplane.store.runs import RunStore\n"
        "def f():\n    import ctrlplane.workers.gc\n    from ctrlplane import config\n"
    )
    assert _ctrlplane_imports(module) == {"store", "workers", "config"}


def test_the_runtime_and_the_store_agree_on_outcomes_and_triggers() -> None:
    # The store keeps its own names for its columns; the runtime writes its
    # own enums into them. The values must be the same, both ways.
    from ctrlplane.actors import runs as actor_runs
    from ctrlplane.store import runs as store_runs

    for ours, theirs in (
        (actor_runs.Outcome, store_runs.Outcome),
        (actor_runs.Trigger, store_runs.Trigger),
    ):
        assert {m.value for m in ours} == {m.value for m in theirs}
