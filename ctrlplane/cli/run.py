"""``ctrlplane run``: the control plane itself, until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

import click

from ctrlplane.cli.common import config_option, data_dir_option, load, nats_option, run_async

if TYPE_CHECKING:
    from ctrlplane.app import ControlPlane
    from ctrlplane.config import Config
    from ctrlplane.logs import LogFormat


@click.command()
@config_option
@nats_option
@data_dir_option
@click.option(
    "--store-url",
    help="A PostgreSQL store shared by a cluster, postgresql://user@host:5432/db, instead of "
    "the SQLite file in the data dir (env: CTRLPLANE_STORE_URL). Keep its password in "
    "store_password_file or ~/.pgpass rather than here: argv is visible to every user.",
)
@click.option(
    "--http-addr",
    help="Where to serve the status page, /metrics, /healthz and /readyz: "
    "host:port (port 0: any free one, "
    "written to <data_dir>/http.json), or 'off' (env: CTRLPLANE_HTTP_ADDR; "
    "default 127.0.0.1:0).",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="How logs are written to stderr.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="CTRLPLANE_LOG_LEVEL",
    help="The least severe log line written (env: CTRLPLANE_LOG_LEVEL).",
)
def run(
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    store_url: str | None,
    http_addr: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Run the control plane's workers until SIGINT or SIGTERM.

    With no NATS URL, starts the bundled nats-server on 127.0.0.1 with its
    store under the data directory, and stops it on exit.
    """
    from ctrlplane.logs import LEVELS, configure_logging

    config = load(
        config_path,
        nats_url=nats_url,
        data_dir=data_dir,
        store_url=store_url,
        http_addr=http_addr,
    )
    fmt: LogFormat = "json" if log_format == "json" else "console"
    configure_logging(fmt, LEVELS[log_level.lower()])
    # Exits within stop_grace + 1 s of a signal even when a worker ignores
    # its cancellation: once stopped, nothing is left to wait for.
    run_async(_serve(config, fmt), exit_if_abandoned=True)


async def _serve(config: Config, fmt: LogFormat) -> None:
    """Start, run until SIGINT or SIGTERM, stop; a signal during start-up stops it too."""
    import asyncio

    from ctrlplane.app import ControlPlane

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    cp = ControlPlane(config)
    backstop = _Backstop(cp, config.stop_grace.total_seconds() + 1.0)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A plain signal handler, not loop.add_signal_handler: it runs in the
        # main thread between bytecodes even while a worker blocks the loop
        # (time.sleep is interrupted for it), so the backstop is armed at once.
        backstop.arm()
        loop.call_soon_threadsafe(stop.set)

    # Installed before anything starts and kept until everything stopped: a
    # signal at any moment asks for the same orderly stop, and a second one
    # during the (bounded) stop does not cut it short.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        starting = asyncio.ensure_future(cp.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not starting.done():
                # start() stops whatever it had started when cancelled.
                starting.cancel()
                await asyncio.wait({starting})
        if starting.cancelled():
            return
        starting.result()
        announce(cp, fmt)
        await stop.wait()
    finally:
        try:
            await cp.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            backstop.disarm()


class _Backstop:
    """Ends the process ``within`` seconds of the first signal, whatever it is doing.

    The orderly stop runs in the event loop; a worker that blocks the loop
    (``time.sleep`` in a run) would hold it past its grace. This timer thread
    does not need the loop: when it fires, the embedded nats-server is told to
    stop and the process exits with status 0 (the stop was asked for). SQLite
    in WAL mode is safe against such an exit, and every message not yet acked
    is redelivered to another process.
    """

    def __init__(self, cp: ControlPlane, within: float) -> None:
        self._cp = cp
        self._within = within
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self._within - 0.1, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """The orderly stop finished in time."""
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        import structlog

        structlog.get_logger("ctrlplane").error(
            "stop took too long (is a worker blocking the event loop?); exiting now",
            after=self._within,
        )
        server = self._cp.server
        pid = server.pid if server is not None else None
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        os._exit(0)


class Reach(NamedTuple):
    """One line of the start banner: a label for people, a key for JSON logs."""

    label: str
    key: str
    value: str


def reach(cp: ControlPlane) -> list[Reach]:
    """Where to reach a started control plane, never with a password."""
    from ctrlplane.config import redact_nats_url

    cfg = cp.config
    server = cp.server
    if server is not None:
        nats = server.info.url
        # The embedded server keeps one user:password file per role there
        # (ctrlplane.bus.server), readable by this user alone.
        secrets = cfg.data_dir / "nats" / "credentials"
        how = (
            f"embedded; a user:password file per role in {secrets}/; "
            "`ctrlplane credentials observer` prints a URL with one"
        )
    else:
        nats = redact_nats_url(cfg.nats_url or "")
        how = (
            f"credentials from {cfg.nats_credentials}"
            if cfg.nats_credentials is not None
            else "credentials as in nats_url"
        )
        how += "; `ctrlplane nats-config` prints the users this NATS needs"
    # A PostgreSQL store's location is its URL, password shown as ***.
    store = cp.store.location
    if cp.store.db.dialect == "sqlite":
        store = f"SQLite file {store}"
    http = cp.http_url
    off = "off (http_addr = off)"
    return [
        Reach("NATS", "nats", f"{nats} ({how})"),
        Reach("Store", "store", store),
        Reach("Status page", "status_page", off if http is None else f"{http}/"),
        Reach("Metrics", "metrics", off if http is None else f"{http}/metrics"),
        Reach("Health", "health", off if http is None else f"{http}/healthz, {http}/readyz"),
        Reach("Data dir", "data_dir", str(cfg.data_dir)),
    ]


def banner(cp: ControlPlane) -> list[str]:
    """What ``run`` prints on stdout once the control plane is up: where to reach
    it, as Temporal's dev server does."""
    rows = reach(cp)
    width = max(len(r.label) for r in rows) + 1
    return [
        f"ctrlplane is running: node {cp.config.node}, process {cp.scheduler.process}",
        *(f"  {(r.label + ':').ljust(width)} {r.value}" for r in rows),
        "Stop it with Ctrl-C (SIGINT) or SIGTERM.",
    ]


def announce(cp: ControlPlane, fmt: LogFormat) -> None:
    """The banner on stdout for a person (console logs); for a machine (JSON
    logs) one log line ``where to reach it`` with the same facts instead, so
    that a log collector that merges stdout and stderr (docker logs, journald)
    reads nothing but JSON."""
    if fmt == "json":
        import structlog

        log = structlog.get_logger("ctrlplane")
        log.info("where to reach it", **{r.key: r.value for r in reach(cp)})
        return
    for line in banner(cp):
        click.echo(line)
