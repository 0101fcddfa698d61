"""``ctrlplane run``'s start banner (ctrlplane/cli/run.py), read from a real run's stdout."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctrlplane.bus.server import ServerInfo, read_server_info
from ctrlplane.config import default_node
from ctrlplane.web.server import read_http_url
from tests.conftest import TEST_PREFIX
from tests.helpers import wait_for
from tests.processes import ctrlplane_bin, env_for, stop

LAST_LINE = "Stop it with Ctrl-C (SIGINT) or SIGTERM."


@contextmanager
def _run(args: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``ctrlplane run ARGS`` with stdout and stderr in files of their own."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([ctrlplane_bin(), "run", *args], env=env, stdout=o, stderr=e)
    try:
        yield out, err
        assert stop(proc) == 0, _text(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _text(path: Path) -> str:
    # Small files on a local disk, read between waits.
    return path.read_text()


async def _banner(out: Path, err: Path) -> dict[str, str]:
    """The banner's labelled lines, once it is whole."""

    def printed() -> bool:
        assert "Traceback" not in _text(err), _text(err)
        return LAST_LINE in _text(out)

    await wait_for(printed, within=60, interval=0.1)
    lines = _text(out).splitlines()
    assert lines[0].startswith(f"ctrlplane is running: node {default_node()}, process ")
    assert lines[-1] == LAST_LINE
    fields = {}
    for line in lines[1:-1]:
        label, sep, value = line.strip().partition(": ")
        assert line.startswith("  ") and sep, line
        fields[label] = value.strip()
    # The values start in one column.
    assert len({line.index(v) for line, v in zip(lines[1:-1], fields.values(), strict=True)}) == 1
    return fields


async def test_the_banner_of_an_embedded_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with _run(["--data-dir", str(data)], env_for(), tmp_path) as (out, err):
        fields = await _banner(out, err)
        info = read_server_info(data)
        http = read_http_url(data)
        assert info is not None and http is not None
        credentials = data / "nats" / "credentials"
        assert fields["NATS"] == (
            f"{info.url} (embedded; a user:password file per role in {credentials}/; "
            "`ctrlplane credentials observer` prints a URL with one)"
        )
        assert sorted(p.name for p in credentials.iterdir()) == sorted(info.secrets)
        assert fields["Store"] == f"SQLite file {data / 'ctrlplane.db'}"
        assert fields["Status page"] == f"{http}/"
        assert fields["Metrics"] == f"{http}/metrics"
        assert fields["Health"] == f"{http}/healthz, {http}/readyz"
        assert fields["Data dir"] == str(data)
        text = _text(out)
        assert not any(secret in text for secret in info.secrets.values())
    # The log line is still written, on stderr.
    assert "control plane started" in _text(err)


async def test_the_banner_on_an_external_nats_with_http_off(
    tmp_path: Path, nats_server: ServerInfo
) -> None:
    data = tmp_path / "data"
    url = nats_server.client_url  # the service role's user and password in it
    # Under the test server's prefix: its users may use nothing else.
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=f"{TEST_PREFIX}.b{uuid.uuid4().hex[:10]}")
    args = ["--data-dir", str(data), "--nats-url", url, "--http-addr", "off"]
    with _run(args, env, tmp_path) as (out, err):
        fields = await _banner(out, err)
        password = nats_server.secrets["service"]
        assert password not in _text(out)
        assert fields["NATS"] == (
            f"{nats_server.url.replace('//', '//service:***@')} (credentials as in nats_url; "
            "`ctrlplane nats-config` prints the users this NATS needs)"
        )
        for label in ("Status page", "Metrics", "Health"):
            assert fields[label] == "off (http_addr = off)"


async def test_with_json_logs_the_banner_is_a_log_line_and_every_line_is_json(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--log-format", "json"]
    with _run(args, env_for(), tmp_path) as (out, err):

        def logged() -> list[dict[str, object]]:
            return [json.loads(line) for line in _text(err).splitlines()]

        def reached() -> bool:
            return any(r["event"] == "where to reach it" for r in logged())

        await wait_for(reached, within=60, interval=0.1)
        info = read_server_info(data)
        http = read_http_url(data)
        assert info is not None and http is not None
        record = next(r for r in logged() if r["event"] == "where to reach it")
        assert str(record["nats"]).startswith(f"{info.url} (embedded; ")
        assert record["store"] == f"SQLite file {data / 'ctrlplane.db'}"
        assert (record["status_page"], record["metrics"]) == (f"{http}/", f"{http}/metrics")
        assert record["data_dir"] == str(data)
        assert any(r["event"] == "control plane started" for r in logged())
    # What a collector merging both streams reads: JSON only.
    assert _text(out) == ""
    assert all(isinstance(json.loads(line), dict) for line in _text(err).splitlines())
