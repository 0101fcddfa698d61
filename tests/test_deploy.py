"""deploy/ctrlplane.service: a systemd unit that runs `ctrlplane run` as an operator expects.

The unit is read as systemd reads it (sections of ``Key=value`` lines, a key
may repeat), its command line is parsed by the real CLI, its timings are
checked against the config's defaults, and ``systemd-analyze verify`` (from
Debian's systemd) checks the whole file when it is installed: locally the
last test skips without it, under CI it fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import click
import pytest

from ctrlplane.cli import main
from ctrlplane.cli.common import EXIT_CONFIG
from ctrlplane.config import Config

UNIT = Path(__file__).parent.parent / "deploy" / "ctrlplane.service"

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """Sections to keys to their values, in order (systemd allows a key twice)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=value: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture
def service() -> dict[str, list[str]]:
    return read_unit(UNIT)["Service"]


def one(section: dict[str, list[str]], key: str) -> str:
    (value,) = section[key]
    return value


def seconds(value: str) -> float:
    """A systemd time span as written here: plain seconds or ``<n>s``/``<n>min``."""
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.removesuffix("s"))


def test_exec_start_is_a_ctrlplane_run_the_cli_accepts(service: dict[str, list[str]]) -> None:
    binary, command, *args = shlex.split(one(service, "ExecStart"))
    assert Path(binary).name == "ctrlplane" and command == "run"
    ctx = click.Context(main)
    run = main.get_command(ctx, "run")
    assert run is not None
    # Parses with the real options (an unknown one raises).
    parsed = run.make_context("run", list(args), parent=ctx)
    assert parsed.params["log_format"] == "json"
    assert one(service, "Type") == "simple"


def test_the_data_dir_is_the_state_directory_kept_private(service: dict[str, list[str]]) -> None:
    env = dict(v.split("=", 1) for v in service["Environment"])
    assert env["CTRLPLANE_DATA_DIR"] == f"/var/lib/{one(service, 'StateDirectory')}"
    assert one(service, "StateDirectoryMode") == "0700"
    assert one(service, "User") != "root"


def test_stop_waits_for_the_grace_and_keeps_instances(service: dict[str, list[str]]) -> None:
    # `ctrlplane run` exits by stop_grace + 1 s after SIGTERM: systemd must not
    # SIGKILL it before.
    grace = Config().stop_grace + timedelta(seconds=1)
    assert one(service, "KillSignal") == "SIGTERM"
    assert seconds(one(service, "TimeoutStopSec")) > grace.total_seconds()
    # Instances are adopted at the next start, so only the main process is stopped.
    assert one(service, "KillMode") == "process"


def test_restarts_on_failure_but_not_on_invalid_config(service: dict[str, list[str]]) -> None:
    assert one(service, "Restart") == "on-failure"
    assert str(EXIT_CONFIG) in one(service, "RestartPreventExitStatus").split()
    unit = read_unit(UNIT)["Unit"]
    assert int(one(unit, "StartLimitBurst")) >= 1


def test_hardening_options(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing; .ci/run installs Debian's systemd")
        pytest.skip("systemd-analyze is not installed")
    # The unit names the install path; verify with this checkout's command,
    # which must exist and be executable for systemd-analyze.
    ours = Path(sys.executable).parent / "ctrlplane"
    assert ours.exists()
    text = UNIT.read_text().replace("/opt/ctrlplane/venv/bin/ctrlplane", str(ours))
    unit = tmp_path / "ctrlplane.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
