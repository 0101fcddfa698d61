"""``ctrlplane`` end to end, as a user runs it: real processes, the embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg

from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.server import ServerInfo, read_server_info
from ctrlplane.cli.events import FETCH_WAIT, print_events
from ctrlplane.config import default_node
from tests.helpers import wait_for
from tests.processes import ctrlplane_bin, env_for, run_cli, started, stop
from tests.sample_workers import read_log


async def test_run_on_the_embedded_default_and_list_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:SlotLog"]\n', encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = env_for(logs)
    args = ["run", "--config", str(config), "--data-dir", str(data)]
    with started(args, env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)
        info = read_server_info(data)
        assert info is not None
        assert info.url.startswith("nats://127.0.0.1:")
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        await wait_for(lambda: bool(list(logs.glob("*.jsonl"))), within=30)

        listed = await asyncio.to_thread(
            run_cli, ["workers", "--json", "--data-dir", str(data)], env
        )
        assert listed.returncode == 0, listed.stderr
        workers = json.loads(listed.stdout)
        names = [w["name"] for w in workers]
        assert {"reconciler", "health_runner", "remediator", "audit_recorder"} <= set(names)
        (w,) = [w for w in workers if w["name"] == "slot-log"]
        assert w["kind"] == "periodic"
        assert w["interval"] == 1.0  # seconds, as on the wire
        assert w["run_count"] >= 1
        assert w["process"].endswith(f":{proc.pid}")
        assert (w["scope"], w.get("node")) == ("cluster", None)
        (health,) = [w for w in workers if w["name"] == "health_runner"]
        # Node-scoped, on this host's node (the default node name).
        assert (health["scope"], health["node"]) == ("node", default_node())
        assert set(w) >= {
            "name",
            "interval",
            "kind",
            "running",
            "last_run",
            "run_count",
            "next_run",
        }
        # No error yet: absent, never null (the API's and events' rule).
        assert "last_error" not in w

        table = await asyncio.to_thread(run_cli, ["workers", "--data-dir", str(data)], env)
        assert table.returncode == 0, table.stderr
        assert "slot-log" in table.stdout and "periodic" in table.stdout
        assert "DEAD LETTERS" in table.stdout.splitlines()[0]
        assert "SCOPE" in table.stdout.splitlines()[0]
        assert f"node:{default_node()}" in table.stdout

        code = await asyncio.to_thread(stop, proc)
    assert code == 0, (tmp_path / "run.log").read_text()
    # The embedded server went with it.
    assert read_server_info(data) is None
    assert not _alive(info.pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_without_a_running_server_says_so(tmp_path: Path) -> None:
    result = run_cli(["workers", "--data-dir", str(tmp_path / "nothing")], env_for())
    assert result.returncode == 1
    assert "no embedded nats-server is running" in result.stderr
    assert "ctrlplane run" in result.stderr


def test_invalid_config_names_the_field_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('health_interval = "soon"\n', encoding="utf-8")
    result = run_cli(["run", "--config", str(config), "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 2
    assert "health_interval" in result.stderr
    assert str(config) in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was started


def test_invalid_env_value_names_the_variable(tmp_path: Path) -> None:
    env = env_for(CTRLPLANE_GC_INTERVAL="-5m")
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 2
    assert "gc_interval" in result.stderr and "CTRLPLANE_GC_INTERVAL" in result.stderr


def test_invalid_worker_name_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:BadName"]\n', encoding="utf-8")
    data = tmp_path / "data"
    result = run_cli(["run", "--config", str(config), "--data-dir", str(data)], env_for())
    assert result.returncode == 1
    assert "Bad Name!" in result.stderr and "invalid name" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_server_info(data) is None  # the embedded server was stopped again


def test_unloadable_worker_reference_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:Missing"]\n', encoding="utf-8")
    result = run_cli(["run", "--config", str(config), "--data-dir", str(tmp_path / "d")], env_for())
    # Bad input, as invalid config is.
    assert result.returncode == 2
    assert "has no attribute 'Missing'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_worker_module_exits_2_like_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["no_such_module_here:Worker"]\n', encoding="utf-8")
    data = tmp_path / "d"
    result = run_cli(["run", "--config", str(config), "--data-dir", str(data)], env_for())
    assert result.returncode == 2
    assert "cannot import 'no_such_module_here'" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_server_info(data) is None


def test_broken_server_binary_is_a_clear_error(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    env = env_for(CTRLPLANE_NATS_SERVER_BINARY=str(fake_bin / "nats-server"))
    (fake_bin / "nats-server").write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    (fake_bin / "nats-server").chmod(0o755)
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 1
    assert "nats-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_store_is_a_clear_error_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://cp:s3cret@127.0.0.1:{_closed_port()}/ctrlplane"
    result = run_cli(["run", "--store-url", url, "--data-dir", str(tmp_path / "d")], env_for())
    assert result.returncode == 1
    assert "cannot connect to postgresql://cp:***@127.0.0.1:" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert read_server_info(tmp_path / "d") is None  # the embedded server was stopped again


def test_a_store_url_that_is_not_postgresql_names_the_variable(tmp_path: Path) -> None:
    env = env_for(CTRLPLANE_STORE_URL="mysql://cp:s3cret@db/ctrlplane")
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 2
    assert "store_url" in result.stderr and "CTRLPLANE_STORE_URL" in result.stderr
    assert "s3cret" not in result.stderr


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _lock_holder(data: Path) -> int | None:
    try:
        return int(json.loads((data / "ctrlplane.lock").read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError):
        return None


async def _exit_after_sigterm(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM ``proc``; its exit code and the seconds from the signal to its exit."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    return code, time.monotonic() - sent


async def test_sigterm_exits_within_grace_when_a_worker_swallows_cancellation(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "ctrlplane.toml"
    config.write_text(
        'workers = ["tests.sample_workers:SwallowsCancel"]\nstop_grace = "1s"\n', encoding="utf-8"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    args = ["run", "--config", str(config), "--data-dir", str(data)]
    with started(args, env_for(logs), tmp_path / "run.log") as proc:
        await wait_for(lambda: any(r["worker"] == "swallows-cancel" for r in read_log(logs)), 30)
        server = read_server_info(data)
        assert server is not None
        code, took = await _exit_after_sigterm(proc)
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output
    assert took < 1.0 + 1.0, f"exited {took:.2f}s after SIGTERM\n{output}"
    assert any(r.get("phase") == "cancel ignored" for r in read_log(logs))
    assert "abandoned" in output
    # Stopped in order all the same: the embedded server went with it.
    assert read_server_info(data) is None
    assert not _alive(server.pid)


async def test_run_gives_up_on_unreachable_nats_with_a_clear_error(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    env = env_for(CTRLPLANE_CONNECT_TIMEOUT="1s")
    began = time.monotonic()
    result = await asyncio.to_thread(
        run_cli, ["run", "--nats-url", url, "--data-dir", str(tmp_path / "d")], env
    )
    took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert f"cannot connect to NATS at {url}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 10, took  # 1 s of retries plus the interpreter's start


async def test_client_commands_give_up_on_unreachable_nats_within_seconds(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    for args in (["workers"], ["instances"], ["events", "--follow"]):
        began = time.monotonic()
        result = await asyncio.to_thread(run_cli, [*args, "--nats-url", url], env_for())
        took = time.monotonic() - began
        assert result.returncode == 1, (args, result.stderr)
        assert f"ctrlplane: cannot connect to NATS at {url}: " in result.stderr, args
        assert "Traceback" not in result.stderr
        assert took < 12, (args, took)  # 3 s of retries plus the interpreter's start


async def test_wrong_token_is_refused_at_once(tmp_path: Path, nats_server: ServerInfo) -> None:
    url = nats_server.url.replace("nats://", "nats://not-the-token@")
    result = await asyncio.to_thread(
        run_cli, ["run", "--nats-url", url, "--data-dir", str(tmp_path / "d")], env_for()
    )
    assert result.returncode == 1, result.stderr
    assert "cannot connect to NATS at nats://***@127.0.0.1:" in result.stderr
    assert "uthorization" in result.stderr
    assert "not-the-token" not in result.stderr


async def test_sigterm_while_connecting_stops_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = f"nats://127.0.0.1:{_closed_port()}"
    env = env_for(CTRLPLANE_CONNECT_TIMEOUT="60s")
    with started(
        ["run", "--nats-url", url, "--data-dir", str(data)], env, tmp_path / "run.log"
    ) as proc:
        # The lock is taken just before connecting.
        await wait_for(lambda: _lock_holder(data) == proc.pid, within=30)
        code, took = await _exit_after_sigterm(proc)
    assert code == 0, (tmp_path / "run.log").read_text()
    assert took < 2, took


async def test_one_process_per_data_dir_whatever_the_mode(
    tmp_path: Path, nats_server: ServerInfo
) -> None:
    data = tmp_path / "data"
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=f"t.t{uuid.uuid4().hex[:10]}")
    first_args = ["run", "--nats-url", nats_server.client_url, "--data-dir", str(data)]
    with started(first_args, env, tmp_path / "first.log") as first:
        await wait_for(lambda: _lock_holder(data) == first.pid, within=30)
        # Embedded, on the same data dir: refused before starting a server.
        second = await asyncio.to_thread(run_cli, ["run", "--data-dir", str(data)], env)
        assert second.returncode == 1, second.stderr
        assert f"data_dir {data} is in use by another ctrlplane process" in second.stderr
        assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert read_server_info(data) is None
        assert first.poll() is None
        assert await asyncio.to_thread(stop, first) == 0
    # Released with the process: the next one may start.
    with started(first_args, env, tmp_path / "third.log") as third:
        await wait_for(lambda: _lock_holder(data) == third.pid, within=30)
        assert await asyncio.to_thread(stop, third) == 0


async def test_events_follow_survives_quiet_fetches(
    tmp_path: Path, nats_server: ServerInfo, bus: Bus
) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=bus.subjects.prefix)
    out = tmp_path / "events.log"
    args = ["events", "--follow", "--since", "1m", "--json", "--nats-url", nats_server.client_url]
    with started(args, env, out) as proc:
        await bus.publish_event(Event(type="test.first", source="test", id="first"))
        await wait_for(lambda: '"first"' in out.read_text(), within=30)
        # Quiet for several fetch timeouts: each ends in a TimeoutError.
        await asyncio.sleep(4 * FETCH_WAIT)
        assert proc.poll() is None, out.read_text()
        await bus.publish_event(Event(type="test.second", source="test", id="second"))
        await wait_for(lambda: '"second"' in out.read_text(), within=30)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 130
    assert "Traceback" not in out.read_text()


def test_misspelt_disabled_worker_and_check_type_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    data = tmp_path / "d"
    config.write_text('disabled_workers = ["remediatorr"]\n', encoding="utf-8")
    result = run_cli(["run", "--config", str(config), "--data-dir", str(data)], env_for())
    assert result.returncode == 2, result.stderr
    assert 'disabled_workers[0]: unknown worker "remediatorr"; did you mean "remediator"?' in (
        result.stderr
    )
    assert read_server_info(data) is None

    config.write_text(
        '[[instances]]\nname = "web"\ncommand = ["true"]\n'
        '[[instances.checks]]\nname = "h"\ntype = "htp"\ntarget = "http://127.0.0.1:1/"\n',
        encoding="utf-8",
    )
    result = run_cli(["run", "--config", str(config), "--data-dir", str(data)], env_for())
    assert result.returncode == 2, result.stderr
    assert 'instances[0].checks[0].type: unknown check type "htp"; did you mean "http"?' in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


class _QuietThenOne:
    """Times out as nats-py does (both kinds of TimeoutError), then has one event."""

    def __init__(self) -> None:
        self.calls = 0
        self.drained = asyncio.Event()

    async def fetch(self, batch: int, timeout: float | None) -> list[Msg]:  # noqa: ASYNC109
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError  # the builtin one, from between its pull requests
        if self.calls == 2:
            raise nats.errors.TimeoutError
        if self.calls == 3:
            msg = Msg(_client=None, subject="p.events.test.late", data=b'{"id":"late"}')  # type: ignore[arg-type]
            return [msg]
        self.drained.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_print_events_follows_through_either_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fetcher = _QuietThenOne()
    follow = asyncio.create_task(print_events(fetcher, follow=True, as_json=True))
    async with asyncio.timeout(10):
        await fetcher.drained.wait()
    follow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follow
    assert capsys.readouterr().out == '{"id":"late"}\n'


class _Once:
    """One fetch with the given payloads, then no more."""

    def __init__(self, *payloads: bytes) -> None:
        self.payloads = payloads
        self.drained = asyncio.Event()

    async def fetch(self, batch: int, timeout: float | None) -> list[Msg]:  # noqa: ASYNC109
        if not self.payloads:
            self.drained.set()
            await asyncio.Event().wait()
        msgs = [
            Msg(_client=None, subject="p.events.test.x", data=p)  # type: ignore[arg-type]
            for p in self.payloads
        ]
        self.payloads = ()
        return msgs


@pytest.mark.parametrize("as_json", [False, True])
async def test_print_events_shows_escape_sequences_instead_of_sending_them(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    event = (
        '{"specversion":"1.0","id":"e1","type":"test.x","source":"\\u001b[2J\\u009b31m",'
        '"time":"2026-01-01T00:00:00Z","data":{"m":"\\u001b]0;title\\u0007"}}'
    )
    undecodable = b'{"id": "\x1b[31m\xc2\x9b\x07'
    fetcher = _Once(event.encode(), undecodable)
    follow = asyncio.create_task(print_events(fetcher, follow=True, as_json=as_json))
    async with asyncio.timeout(10):
        await fetcher.drained.wait()
    follow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follow
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out
    # The table has its header row first.
    assert len(out.splitlines()) == (2 if as_json else 3)
    if not as_json:
        assert "\\x1b[2J\\x9b31m" in out


@pytest.mark.parametrize(
    ("content", "variables", "says"),
    [
        (None, {"CTRLPLANE_CONFIG": "/dev/zero"}, "config: not a regular file"),
        (b"\xff = 1\n", {}, "config: not UTF-8 text"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", {}, "nested too deeply"),
        (b'events_max_age = "1000000d"\n', {}, "events_max_age: must be at most 36500d"),
        (b"", {"CTRLPLANE_HEALTH_CONCURRENCY": "0"}, "health_concurrency: must be at least 1"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | None, variables: dict[str, str], says: str
) -> None:
    env = {**env_for(), **variables}
    if content is not None:
        path = tmp_path / "ctrlplane.toml"
        path.write_bytes(content)
        env["CTRLPLANE_CONFIG"] = str(path)
    for args in (["workers"], ["run", "--data-dir", str(tmp_path / "d")]):
        result = run_cli(args, env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("ctrlplane: config: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["deployments", "--limit", "20000"], "--limit"),
        (["telemetry", "web", "--since", "40000d"], "--since: must be at most 36500d"),
    ],
)
def test_out_of_range_request_options_are_refused_before_sending(
    args: list[str], says: str
) -> None:
    result = run_cli([*args, "--nats-url", "nats://127.0.0.1:1"], env_for())
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


async def test_json_logs_at_debug_are_json_without_python_reprs(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:LogsValues"]\n', encoding="utf-8")
    data = tmp_path / "data"
    out = tmp_path / "run.log"
    args = ["run", "--config", str(config), "--data-dir", str(data), "--log-format", "json"]
    env = env_for(CTRLPLANE_LOG_LEVEL="debug")
    # The level from the environment, as a unit file or compose would set it.
    with started(args, env, out) as proc:
        await wait_for(lambda: "values logged" in out.read_text(errors="replace"), within=30)
        code = await asyncio.to_thread(stop, proc)
    assert code == 0, out.read_text()
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert "datetime.datetime(" not in out.read_text() and "PosixPath(" not in out.read_text()
    assert {r["level"] for r in records} >= {"debug", "info"}
    values = next(r for r in records if r["event"] == "values logged")
    assert values["when"] == "2027-03-04T05:06:07+00:00"
    assert values["took"] == 120.0
    assert values["path"] == "/var/lib/ctrlplane"
    assert values["colour"] == 1


def test_log_level_is_checked_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = run_cli(["run", "--data-dir", str(data), "--log-level", "loud"], env_for())
    assert result.returncode == 2
    assert "--log-level" in result.stderr
    assert not data.exists()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shells_script(shell: str) -> None:
    result = run_cli(["completion", shell], env_for())
    assert result.returncode == 0, result.stderr
    assert "ctrlplane" in result.stdout and "_CTRLPLANE_COMPLETE" in result.stdout


def test_bash_completion_is_valid_and_completes_a_command(tmp_path: Path) -> None:
    script = tmp_path / "ctrlplane.bash"
    script.write_text(run_cli(["completion", "bash"], env_for()).stdout, encoding="utf-8")
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    # What bash does on `ctrlplane wor<TAB>`: the function asks ctrlplane itself.
    env = env_for()
    env["PATH"] = os.pathsep.join([str(Path(ctrlplane_bin()).parent), env["PATH"]])
    completed = subprocess.run(
        [
            "bash",
            "-c",
            f'source "{script}"; COMP_WORDS=(ctrlplane wor); COMP_CWORD=1; '
            '_ctrlplane_completion ctrlplane; echo "${COMPREPLY[@]}"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.stdout.split() == ["worker", "workers"], completed.stderr


def test_unknown_shell_is_a_usage_error() -> None:
    result = run_cli(["completion", "tcsh"], env_for())
    assert result.returncode == 2 and "tcsh" in result.stderr


async def test_events_table_type_prefix_and_instance(
    tmp_path: Path, nats_server: ServerInfo, bus: Bus
) -> None:
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    for id, type, source, subject in [
        ("e1", "test.probe.failed", "health_runner", "web-1"),
        ("e2", "test.probe.ok", "a-much-longer-source-name", "web-2"),
        ("e3", "test.started", "reconciler", "web-1"),
        ("e4", "test.probes", "test", "web-1"),  # no match for --type test.probe
    ]:
        await bus.publish_event(Event(type=type, source=source, id=id, subject=subject))
    env = env_for(CTRLPLANE_SUBJECT_PREFIX=bus.subjects.prefix)
    base = ["events", "--nats-url", nats_server.client_url]

    async def lines(*args: str) -> list[str]:
        result = await asyncio.to_thread(run_cli, [*base, *args], env)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    health = await lines("--type", "test.probe")
    assert health[0].split() == ["TIME", "TYPE", "SUBJECT", "SOURCE", "DATA"]
    assert [line.split()[1] for line in health[1:]] == ["test.probe.failed", "test.probe.ok"]
    # Aligned: every row's source starts where the header's does.
    column = health[0].index("SOURCE")
    assert health[1][column:].startswith("health_runner ")
    assert health[2][column:].startswith("a-much-longer-source-name ")

    about = await lines("--instance", "web-1")
    assert [line.split()[1] for line in about[1:]] == [
        "test.probe.failed",
        "test.started",
        "test.probes",
    ]
    web2 = await lines("--type", "test.probe.*", "--instance", "web-2")
    assert [line.split()[1] for line in web2] == ["TYPE", "test.probe.ok"]
    # A type matches itself exactly too; a wildcard pattern is used as it is.
    assert len(await lines("--type", "test.started")) == 2
    assert len(await lines("--type", "*.started")) == 2


async def test_workers_table_says_when_the_last_error_was_after_a_success(tmp_path: Path) -> None:
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:FailsFirst"]\n', encoding="utf-8")
    data = tmp_path / "data"
    env = env_for()
    args = ["run", "--config", str(config), "--data-dir", str(data)]

    def fails_first() -> dict[str, object] | None:
        listed = run_cli(["workers", "--json", "--data-dir", str(data)], env)
        if listed.returncode != 0:
            return None
        found = [w for w in json.loads(listed.stdout) if w["name"] == "fails-first"]
        return found[0] if found else None

    with started(args, env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)

        async def recovered() -> bool:
            w = await asyncio.to_thread(fails_first)
            return w is not None and int(str(w["run_count"])) >= 2

        await wait_for(recovered, within=30, interval=0.5)
        w = await asyncio.to_thread(fails_first)
        assert w is not None
        assert w["error_count"] == 1 and "last_error" not in w and "last_error_at" in w
        table = await asyncio.to_thread(run_cli, ["workers", "--data-dir", str(data)], env)
        assert await asyncio.to_thread(stop, proc) == 0
    lines = table.stdout.splitlines()
    header = lines[0]
    (row,) = [line for line in lines if " fails-first " in line]
    errors = row[header.index("ERRORS") : header.index("DEAD LETTERS")].strip()
    assert errors.startswith("1 (last ") and errors.endswith("s ago)"), row
    next_run = row[header.index("NEXT RUN") : header.index("LAST ERROR")].strip()
    assert next_run == "due" or next_run.startswith("in "), row
    assert row[header.index("LAST ERROR") :].strip() == ""


def test_next_run_due_now_is_due_never_0s_ago() -> None:
    from datetime import UTC, datetime

    from ctrlplane.cli.workers import _next_run

    now = datetime.now(UTC)
    assert _next_run(now) == "due"
    assert _next_run(now - timedelta(seconds=3)) == "due"
    assert _next_run(now + timedelta(seconds=30)) in {"in 30s", "in 29s"}
    assert _next_run(None) == "-"


def test_an_invalid_cron_schedule_exits_2_naming_the_field(tmp_path: Path) -> None:
    env = env_for(CTRLPLANE_GC_SCHEDULE="0 25 * * *")
    result = run_cli(["run", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 2
    assert "gc_schedule" in result.stderr and "CTRLPLANE_GC_SCHEDULE" in result.stderr
    assert not (tmp_path / "d").exists()


async def test_a_built_in_worker_on_a_cron_schedule_runs_at_its_occurrences(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = env_for(
        CTRLPLANE_GC_SCHEDULE="* * * * * */2", CTRLPLANE_SCHEDULE_TIMEZONE="Europe/Berlin"
    )
    with started(["run", "--data-dir", str(data)], env, tmp_path / "run.log") as proc:
        await wait_for(lambda: read_server_info(data) is not None, within=30)

        async def gc_runs() -> list[dict[str, object]]:
            listed = await asyncio.to_thread(
                run_cli, ["runs", "gc", "--json", "--data-dir", str(data)], env
            )
            assert listed.returncode == 0, listed.stderr
            runs: list[dict[str, object]] = json.loads(listed.stdout)
            return runs

        async def ran_twice() -> bool:
            return len(await gc_runs()) >= 2

        await wait_for(ran_twice, within=30, interval=0.5)
        listed = await asyncio.to_thread(
            run_cli, ["workers", "--json", "--data-dir", str(data)], env
        )
        (gc,) = [w for w in json.loads(listed.stdout) if w["name"] == "gc"]
        assert (gc["schedule"], gc["timezone"], gc["interval"]) == (
            "* * * * * */2",
            "Europe/Berlin",
            0.0,
        )
        (health,) = [w for w in json.loads(listed.stdout) if w["name"] == "health_runner"]
        assert "schedule" not in health and "timezone" not in health  # absent, never null
        table = await asyncio.to_thread(run_cli, ["workers", "--data-dir", str(data)], env)
        assert "SCHEDULE" in table.stdout.splitlines()[0]
        assert "* * * * * */2 Europe/Berlin" in table.stdout
        # Each run's tick is an even epoch second: the occurrence is the slot.
        for run in await gc_runs():
            ref = str(run["ref"])
            assert ref.startswith("gc/") and int(ref.split("/")[1]) % 2 == 0, run
        code = await asyncio.to_thread(stop, proc)
    assert code == 0, (tmp_path / "run.log").read_text()
