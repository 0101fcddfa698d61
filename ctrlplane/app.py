"""ControlPlane: wires the bus, the store and the scheduler, and runs them."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import structlog

from ctrlplane.actors.control import workers_reply
from ctrlplane.actors.schedule import on_schedule
from ctrlplane.actors.scheduler import Scheduler
from ctrlplane.actors.types import Worker
from ctrlplane.api import ApiService, DomainApi, WorkersReply, WorkersRequest
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.limits import BusLimits
from ctrlplane.bus.server import EmbeddedServer
from ctrlplane.bus.subjects import Subjects
from ctrlplane.certs.registry import load_router
from ctrlplane.checks.registry import close_checkers, load_checkers
from ctrlplane.cluster.nodes import NodeRegistry
from ctrlplane.cluster.remote import NodeLifecycle, RemoteLifecycle
from ctrlplane.config import Config, check_names
from ctrlplane.domains import DomainError, apply_domains
from ctrlplane.errors import CtrlplaneError, DataDirInUseError
from ctrlplane.events import EVENT_TYPES
from ctrlplane.files import private_dir
from ctrlplane.inventory import Inventory
from ctrlplane.plugins import entry_point_workers, load_worker
from ctrlplane.providers.registry import load_providers
from ctrlplane.security import ROLES, embedded_authorization, nats_url
from ctrlplane.store.db import DB_FILE, Store
from ctrlplane.telemetry.registry import load_collectors
from ctrlplane.types import Checker, Provider, Router
from ctrlplane.web.addr import parse_http_addr
from ctrlplane.web.feed import EventFeed
from ctrlplane.web.metrics import Metrics
from ctrlplane.web.page import StatusPage
from ctrlplane.web.server import HttpServer
from ctrlplane.web.status import StatusSource
from ctrlplane.workers import (
    AuditRecorder,
    CertRenewer,
    GarbageCollector,
    HealthRunner,
    Reconciler,
    Remediator,
    TelemetryCollector,
)

log = structlog.get_logger("ctrlplane")

__all__ = ["DB_FILE", "LOCK_FILE", "ControlPlane", "store_for"]

LOCK_FILE = "ctrlplane.lock"
"""Held (``flock``) by the one process that uses a data dir; names it (pid, host)."""

# The built-in worker classes, for their names before they are built.
_BUILTIN_WORKERS = (
    Reconciler,
    HealthRunner,
    Remediator,
    AuditRecorder,
    CertRenewer,
    GarbageCollector,
    TelemetryCollector,
)


class ControlPlane:
    """The control plane of one process: its workers, its bus and its store.

    ``start`` connects to NATS (or starts the embedded ``nats-server`` when
    ``config.nats_url`` is None), opens the store (``config.store_url``:
    the SQLite file in the data dir, or PostgreSQL), loads the custom
    workers named in ``config.workers`` and in the ``ctrlplane.workers``
    entry-point group, and starts the scheduler. ``stop`` undoes it all,
    giving runs in flight ``config.stop_grace`` to finish.

    Example::

        async with ControlPlane(Config()) as cp:
            ...  # workers run until the block exits

    Args:
        config: The configuration; defaults to ``Config()``.
        load_plugins: Whether to load workers from entry points.
    """

    def __init__(self, config: Config | None = None, *, load_plugins: bool = True) -> None:
        self.config = config or Config()
        self._load_plugins = load_plugins
        subjects = Subjects(self.config.subject_prefix)
        self.bus = Bus(
            subjects,
            name=f"ctrlplane:{os.getpid()}",
            limits=BusLimits(
                max_event_size=self.config.max_event_size,
                events_max_bytes=self.config.events_max_bytes,
                dlq_max_age=self.config.dlq_max_age,
                dlq_max_bytes=self.config.dlq_max_bytes,
                stream_replicas=self.config.stream_replicas,
                max_consumers=self.config.max_consumers,
            ),
        )
        self.store = store_for(self.config)
        # Served at /metrics; told of every run by the scheduler.
        self.metrics = Metrics(self.bus, self.store, lambda: self.scheduler.specs())
        self.scheduler = Scheduler(
            events_max_age=self.config.events_max_age,
            node=self.config.node,
            event_types=EVENT_TYPES,
            observer=self.metrics,
        )
        self._server: EmbeddedServer | None = None
        self._api: ApiService | None = None
        self._checkers: dict[str, Checker] = {}
        self.inventory: Inventory | None = None
        self._nodes: NodeRegistry | None = None
        self._lifecycle: NodeLifecycle | None = None
        self._router: Router | None = None
        self._http: HttpServer | None = None
        # Exists before start, so that cp.telemetry.register_collector(...)
        # can add collectors; the built-in and plugin ones are added at start.
        self.telemetry = TelemetryCollector(
            self.store,
            interval=self.config.telemetry_flush_interval,
            concurrency=self.config.telemetry_concurrency,
        )
        self._started = False
        self._lock = _DataDirLock(self.config.data_dir)
        self._page: StatusPage | None = None

    @property
    def server(self) -> EmbeddedServer | None:
        """The embedded nats-server, when this control plane started one."""
        return self._server

    @property
    def nodes(self) -> NodeRegistry:
        """This process's node and its view of the cluster's nodes. Made at start."""
        if self._nodes is None:
            raise CtrlplaneError("the node registry is made at start: start the control plane")
        return self._nodes

    @property
    def router(self) -> Router:
        """The network router: ``file``, unless a package declares another. Loaded at start."""
        if self._router is None:
            raise CtrlplaneError("the router is loaded at start: start the control plane first")
        return self._router

    def register(self, worker: Worker) -> None:
        """Register a worker beside the built-in ones; call before :meth:`start`."""
        self.scheduler.register(worker)

    async def start(self) -> None:
        """Start everything; on failure, whatever was started is stopped again."""
        if self._started:
            raise CtrlplaneError("control plane already started")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self._shutdown(timedelta(0))
            raise

    async def _start(self) -> None:
        cfg = self.config
        try:
            private_dir(cfg.data_dir)
        except (OSError, ValueError) as exc:
            raise CtrlplaneError(f"data_dir {cfg.data_dir}: {exc}") from exc
        # Before anything else: a second process on this data dir, embedded
        # or not, would run every slot twice and share the SQLite file.
        self._lock.acquire()
        custom = [load_worker(ref) for ref in cfg.workers]
        if self._load_plugins:
            custom += entry_point_workers()
        self._checkers = load_checkers()
        check_names(
            cfg,
            workers=[
                *(w.name for w in _BUILTIN_WORKERS),
                *(w.name for w in custom),
                *(w.name for w in self.scheduler.workers()),
            ],
            check_types=self._checkers,
        )
        url = nats_url(cfg)
        if url is None:
            binary = str(cfg.nats_server_binary) if cfg.nats_server_binary else None
            self._server = EmbeddedServer(
                cfg.data_dir,
                binary=binary,
                roles=ROLES,
                authorization=embedded_authorization(
                    self.bus.subjects, publisher_event_types=cfg.publisher_event_types
                ),
            )
            info = await self._server.start()
            # The service role: the lease keeper's connection (Bus.peer_options) reuses it.
            url = info.client_url
            log.info("embedded nats-server started", url=info.url, pid=info.pid)
        await self.bus.connect(url, connect_timeout=cfg.connect_timeout)
        await self.store.open()
        log.info(
            "store opened",
            backend=str(self.store.db.dialect),
            store=self.store.location,
            identity=self.store.identity,
        )
        # Before any worker runs: a process whose store differs from its
        # cluster's must refuse to start rather than split the state.
        self._nodes = NodeRegistry(
            self.bus,
            node=cfg.node,
            process=self.scheduler.process,
            store_id=self.store.identity,
            timeout=cfg.node_timeout,
        )
        await self._nodes.start()
        providers = load_providers(cfg.data_dir, executables=cfg.process_executables)
        self._router = load_router(cfg)
        # Who lifecycle and domain events come from: this process.
        source = f"ctrlplane:{self.scheduler.process}"
        self.inventory = Inventory(
            self.store,
            providers,
            self.bus.publish_event,
            source=source,
            stop_grace=cfg.stop_grace,
            process_executables=cfg.process_executables,
            nodes=self._nodes,
            remote=RemoteLifecycle(self.bus, stop_grace=cfg.stop_grace),
        )
        # Other nodes ask this one to start and stop the instances placed on it.
        self._lifecycle = NodeLifecycle(self.bus, self.store, self.inventory, cfg.node)
        await self._lifecycle.start()
        for worker in [*self._builtin_workers(providers, self.inventory), *custom]:
            if worker.name not in cfg.disabled_workers:
                expression = cfg.schedule_of(worker.name)
                if expression is not None:
                    worker = on_schedule(worker, expression, cfg.schedule_timezone)
                self.register(worker)
        self.scheduler.use(self.bus, self.store.runs)
        await self.scheduler.start()
        domain = DomainApi(
            self.bus,
            self.store,
            self.inventory,
            router=self.router,
            allow_apply=cfg.api_apply,
            nodes=self._nodes,
        )
        scheduler = self.scheduler

        async def workers(_: WorkersRequest) -> WorkersReply:
            return workers_reply(scheduler)

        from ctrlplane.api.controls import ControlApi

        controls = ControlApi(self.bus, scheduler, self._nodes)
        self._api = ApiService(
            self.bus, {**domain.handlers(), "workers": workers, **controls.handlers()}
        )
        await self._api.start()
        if cfg.instances is not None:
            # After the scheduler: the workers' consumers exist, so the
            # reconciler and the audit recorder see the events this publishes.
            result = await self.inventory.apply(cfg.instances)
            log.info(
                "instances applied",
                created=result.created,
                updated=result.updated,
                removed=result.removed,
            )
            for error in result.errors:
                log.error("instance not applied", error=error)
        if cfg.domains is not None:
            try:
                synced = await apply_domains(
                    self.store,
                    self.router,
                    cfg.domains,
                    self.bus.publish_event,
                    source=source,
                )
            except DomainError as exc:
                log.error("domains not applied", error=str(exc))
            else:
                log.info(
                    "domains applied",
                    created=synced.created,
                    updated=synced.updated,
                    removed=synced.removed,
                )
        addr = parse_http_addr(cfg.http_addr)
        if addr is not None:
            self._http = HttpServer(
                addr,
                cfg.data_dir,
                {"nats": self._nats_ready, "store": self._store_ready, "scheduler": self._ready},
                mounts=[self._status_page(domain).mount],
                metrics=self.metrics,
            )
            try:
                await self._http.start()
            except OSError as exc:
                self._http = None
                raise CtrlplaneError(f"http_addr {cfg.http_addr}: {exc}") from exc
        log.info(
            "control plane started",
            http=self._http.url if self._http is not None else "off",
            process=self.scheduler.process,
            workers=[w.name for w in self.scheduler.workers()],
            data_dir=str(cfg.data_dir),
            node=cfg.node,
            store=self.store.identity,
        )

    def _status_page(self, domain: DomainApi) -> StatusPage:
        source = StatusSource(
            self.bus, domain, process=self.scheduler.process, node=self.config.node
        )
        self._page = StatusPage(source, EventFeed(self.bus))
        return self._page

    @property
    def status_page(self) -> StatusPage | None:
        """The page at ``/`` of :attr:`http_url`; None before start or with ``off``."""
        return self._page if self._http is not None else None

    @property
    def http_url(self) -> str | None:
        """Where ``/healthz`` and ``/readyz`` are served; None before start or with ``off``."""
        return self._http.url if self._http is not None else None

    async def _nats_ready(self) -> str | None:
        # Not is_closed: a client that is reconnecting is not connected.
        return None if self.bus.connected and self.bus.nc.is_connected else "not connected to NATS"

    async def _store_ready(self) -> str | None:
        # A write that changes nothing: it needs the write lock (SQLite) or a
        # writable primary (PostgreSQL), which a read would not show.
        await self.store.db.execute("UPDATE meta SET value = value WHERE key = ?", ("store_id",))
        return None

    async def _ready(self) -> str | None:
        return None if self.scheduler.running else "the scheduler is not running"

    def _builtin_workers(
        self, providers: dict[str, Provider], inventory: Inventory
    ) -> list[Worker]:
        cfg = self.config
        self.telemetry.register_defaults(load_collectors(providers))
        # Node-scoped: each node sweeps and collects its shard of the instances.
        self.telemetry.nodes = self.nodes
        return [
            Reconciler(
                self.store,
                providers,
                interval=cfg.reconcile_interval,
                nodes=self.nodes,
                inventory=inventory,
                stop_grace=cfg.stop_grace,
            ),
            HealthRunner(
                self.store,
                self._checkers,
                interval=cfg.health_interval,
                concurrency=cfg.health_concurrency,
                nodes=self.nodes,
            ),
            Remediator(self.store, inventory, cfg.remediation),
            AuditRecorder(self.store),
            CertRenewer(self.store, self.router, interval=cfg.cert_renew_interval),
            GarbageCollector(
                self.store,
                interval=cfg.gc_interval,
                deployment_retention=cfg.deployment_retention,
                health_history_limit=cfg.health_history_limit,
                audit_retention=cfg.audit_retention,
                audit_max_rows=cfg.audit_max_rows,
                telemetry_retention=cfg.telemetry_retention,
                batch_size=cfg.gc_batch_size,
                batch_pause=cfg.gc_batch_pause,
            ),
            self.telemetry,
        ]

    async def stop(self, grace: timedelta | None = None) -> None:
        """Stop gracefully: runs in flight get ``grace`` (default ``config.stop_grace``)."""
        if not self._started:
            return
        await self._shutdown(self.config.stop_grace if grace is None else grace)

    async def _shutdown(self, grace: timedelta) -> None:
        self._started = False
        try:
            if self._http is not None:
                await self._http.stop()
                self._http = None
            if self._api is not None:
                await self._api.stop()
            self._api = None
            if self._lifecycle is not None:
                await self._lifecycle.stop(grace)
                self._lifecycle = None
            await self.scheduler.stop(grace)
        finally:
            if self._nodes is not None:
                await self._nodes.stop()
            try:
                await close_checkers(self._checkers)
                await self.telemetry.close()
                await self.bus.close()
                await self.store.close()
            finally:
                try:
                    if self._server is not None:
                        await self._server.stop()
                        self._server = None
                finally:
                    self._lock.release()

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def store_for(config: Config) -> Store:
    """The store ``config`` names, not yet open: ``store_url`` (PostgreSQL, or a
    SQLite file several processes of one host share), or the SQLite file
    :data:`DB_FILE` in ``data_dir``.

    Every part that opens the store from a configuration goes through here.
    """
    return Store.from_url(
        config.store_url, data_dir=config.data_dir, password_file=config.store_password_file
    )


class _DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/ctrlplane.lock``, held while the process runs.

    The kernel drops it when the process dies, however it dies, so a stale
    file never blocks a restart; the file itself is left in place (removing
    it would let two processes lock two different files).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CtrlplaneError(f"data_dir {self.path.parent}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataDirInUseError(str(self.path.parent), holder) from None
        except OSError as exc:
            os.close(fd)
            raise CtrlplaneError(f"data_dir {self.path.parent}: cannot lock: {exc}") from exc
        os.ftruncate(fd, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: ``pid 123 on host``."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {int(record['pid'])} on {record['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        # It may be between taking the lock and writing its name.
        return "holder unknown"
