"""What importing a part of ctrlplane costs: a worker module or a client command
pays only for what it uses (package ``__init__``s import lazily, PEP 562).

Each case runs in a clean interpreter, since this one has imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "aiohttp",
    "cryptography",
    "aiosqlite",
    "asyncpg",
    "ctrlplane.inventory",
    "ctrlplane.rollout",
    "ctrlplane.workers",
    "ctrlplane.checks",
    "ctrlplane.certs",
    "ctrlplane.telemetry",
    "ctrlplane.providers",
    "ctrlplane.app",
    # The API's serving side; its client (ctrlplane.api.client, errors, wire) is light.
    "ctrlplane.api.domain",
    "ctrlplane.api.messages",
    "ctrlplane.api.service",
    "ctrlplane.api.schema",
    "ctrlplane.config",
    "ctrlplane.store.db",
    "prometheus_client",
)

LIGHT_IMPORTS = (
    "import ctrlplane",
    "import ctrlplane.actors",
    "import ctrlplane.bus.messages",
    "from ctrlplane.bus import Event, Tick",
    # What a user's worker module imports.
    "from ctrlplane.actors import Reject, Retry, RunContext, Worker, WorkerInfo, WorkerKind",
)


def _modules_after(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", LIGHT_IMPORTS)
def test_light_import_pulls_in_nothing_heavy(statement: str) -> None:
    loaded = _modules_after(statement)
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY))
    assert heavy == [], f"{statement!r} imported {heavy}"


def test_loading_the_config_loads_no_runtime() -> None:
    # The config validates declarations; it must not load what carries them out.
    loaded = _modules_after("from ctrlplane.config import load_config")
    runtime = (
        "aiosqlite",
        "asyncpg",
        "asyncio",
        "nats",
        "psutil",
        "ctrlplane.store.db",
        "ctrlplane.inventory",
    )
    assert sorted(m for m in loaded if m in runtime) == []


@pytest.mark.parametrize(
    "module", ["ctrlplane.files", "ctrlplane.oserrors", "ctrlplane.lazy", "ctrlplane.bus.private"]
)
def test_shared_helpers_are_leaves(module: str) -> None:
    # The bus uses ctrlplane.files too: it must pull in nothing above the bus.
    loaded = _modules_after(f"import {module}")
    ours = {m for m in loaded if m == "ctrlplane" or m.startswith("ctrlplane.")}
    # (ctrlplane.lazy is the packages' own lazy-export leaf.)
    assert ours <= {"ctrlplane", "ctrlplane.lazy", "ctrlplane.bus", "ctrlplane.files", module}


def test_lazy_names_resolve_and_misspelt_ones_fail() -> None:
    import ctrlplane
    import ctrlplane.actors
    import ctrlplane.bus

    assert ctrlplane.actors.Scheduler.__name__ == "Scheduler"
    assert ctrlplane.bus.Event.__name__ == "Event"
    assert ctrlplane.ControlPlane.__name__ == "ControlPlane"
    assert "Scheduler" in dir(ctrlplane.actors)
    with pytest.raises(AttributeError, match="Schedular"):
        _ = ctrlplane.actors.Schedular  # type: ignore[attr-defined]


def test_every_package_export_resolves() -> None:
    import importlib

    for package in (
        "ctrlplane",
        "ctrlplane.actors",
        "ctrlplane.bus",
        "ctrlplane.store",
        "ctrlplane.certs",
        "ctrlplane.checks",
        "ctrlplane.providers",
        "ctrlplane.telemetry",
        "ctrlplane.workers",
    ):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"


def test_cli_help_imports_no_runtime() -> None:
    loaded = _modules_after(
        "from click.testing import CliRunner\n"
        "from ctrlplane.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0"
    )
    heavy = sorted(
        m
        for m in loaded
        if any(m == h or m.startswith(f"{h}.") for h in (*HEAVY, "nats", "ctrlplane.store"))
    )
    assert heavy == [], f"ctrlplane --help imported {heavy}"


def test_the_workers_command_loads_nats_but_no_runtime() -> None:
    # It asks over NATS; the store, the actor runtime and the domain stay unloaded.
    loaded = _modules_after(
        "import ctrlplane.cli.workers, ctrlplane.api.client, ctrlplane.cli.common"
    )
    assert "nats" in loaded
    # nats-py itself imports aiohttp (for its websocket transport): not ours to avoid.
    runtime = (
        *(h for h in HEAVY if h != "aiohttp"),
        "ctrlplane.actors.actor",
        "ctrlplane.actors.scheduler",
    )
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in runtime))
    assert heavy == [], f"ctrlplane workers imported {heavy}"
