"""``ctrlplane credentials``, ``ctrlplane nats-config`` and the CLI's roles, run as a user would."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import nats
import pytest_asyncio

from ctrlplane import Config, ControlPlane
from ctrlplane.bus.server import EmbeddedServer, ServerInfo, find_binary
from ctrlplane.bus.subjects import Subjects
from ctrlplane.security import ROLES, embedded_authorization, read_credentials
from tests.processes import env_for, run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_nats_config_prints_a_block_nats_server_accepts_and_keeps_its_secrets(
    tmp_path: Path,
) -> None:
    out = tmp_path / "creds"
    args = ["nats-config", "--prefix", "acme", "--out-dir", str(out)]
    first = run_cli([*args, "--publisher-event-type", "usage.*"], env_for())
    assert first.returncode == 0, first.stderr
    config = tmp_path / "nats.conf"
    config.write_text(f"port: -1\n{first.stdout}")
    checked = subprocess.run(
        [find_binary(), "-t", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert '"acme.events.usage.*"' in first.stdout
    assert _mode(out) == 0o700
    secrets = {}
    for role in ROLES:
        assert _mode(out / role) == 0o600, role
        user, secrets[role] = read_credentials(out / role)
        assert user == role
        assert f'password: "{secrets[role]}"' in first.stdout
    # Run again: the same passwords, so the replicas' files stay valid.
    again = run_cli(args, env_for())
    assert again.returncode == 0, again.stderr
    assert all(f'password: "{secret}"' in again.stdout for secret in secrets.values())


def test_nats_config_refuses_a_bad_event_type(tmp_path: Path) -> None:
    result = run_cli(["nats-config", "--publisher-event-type", "a b"], env_for())
    assert result.returncode == 2
    assert "not an event type" in result.stderr


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerInfo]:
    running = EmbeddedServer(
        tmp_path / "data", roles=ROLES, authorization=embedded_authorization(Subjects("ctrlplane"))
    )
    info = await running.start()
    try:
        yield info
    finally:
        await running.stop()


async def test_credentials_prints_a_role_url_that_connects(
    server: ServerInfo, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    result = await asyncio.to_thread(
        run_cli, ["credentials", "observer", "--data-dir", data], env_for()
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url == server.role_url("observer")
    nc = await nats.connect(url, allow_reconnect=False)
    await nc.close()
    wrong = await asyncio.to_thread(run_cli, ["credentials", "root", "--data-dir", data], env_for())
    assert wrong.returncode == 2


def test_credentials_without_a_server_says_so(tmp_path: Path) -> None:
    result = run_cli(["credentials", "admin", "--data-dir", str(tmp_path)], env_for())
    assert result.returncode == 1
    assert "no embedded nats-server is running" in result.stderr


async def test_cli_applies_as_admin_and_reads_as_observer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    cp = ControlPlane(
        Config(data_dir=data, subject_prefix=prefix, stop_grace=timedelta(seconds=2)),
        load_plugins=False,
    )
    await cp.start()
    try:
        await cp.bus.nc.flush()
        env = env_for(CTRLPLANE_SUBJECT_PREFIX=prefix)
        declared = tmp_path / "fleet.toml"
        declared.write_text('[[instances]]\nname = "nap"\ncommand = ["sleep", "30"]\n')
        applied = await asyncio.to_thread(
            run_cli, ["apply", "-f", str(declared), "--data-dir", str(data)], env
        )
        assert applied.returncode == 0, applied.stderr
        listed = await asyncio.to_thread(
            run_cli, ["instances", "--json", "--data-dir", str(data)], env
        )
        assert listed.returncode == 0, listed.stderr
        assert '"nap"' in listed.stdout
        workers = await asyncio.to_thread(
            run_cli, ["workers", "--json", "--data-dir", str(data)], env
        )
        assert workers.returncode == 0, workers.stderr
        assert '"reconciler"' in workers.stdout
        declared.write_text("instances = []\n")
        removed = await asyncio.to_thread(
            run_cli, ["apply", "-f", str(declared), "--data-dir", str(data)], env
        )
        assert removed.returncode == 0, removed.stderr
    finally:
        await cp.stop()


async def test_external_nats_takes_credentials_from_a_file(
    nats_server: ServerInfo, config: Config, tmp_path: Path
) -> None:
    secret_file = tmp_path / "service"
    secret_file.write_text(f"service:{nats_server.secrets['service']}\n")
    secret_file.chmod(0o600)
    # No password in the URL: it comes from the file only.
    joined = msgspec.structs.replace(config, nats_url=nats_server.url, nats_credentials=secret_file)
    cp = ControlPlane(joined, load_plugins=False)
    await cp.start()
    try:
        assert cp.bus.connected
    finally:
        await cp.stop()


def test_unreadable_credentials_file_names_the_field(tmp_path: Path) -> None:
    env = env_for(
        CTRLPLANE_NATS_URL="nats://127.0.0.1:4222",
        CTRLPLANE_NATS_CREDENTIALS=str(tmp_path / "missing"),
    )
    result = run_cli(["workers"], env)
    assert result.returncode == 2, result.stderr
    assert "nats_credentials" in result.stderr
    assert "cannot read" in result.stderr
