"""``ctrlplane run``: the control plane itself, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from ctrlplane.app import ControlPlane
from ctrlplane.cli.common import config_option, data_dir_option, load, nats_option, run_async
from ctrlplane.config import Config
from ctrlplane.logs import LogFormat, configure_logging


@click.command()
@config_option
@nats_option
@data_dir_option
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="How logs are written to stderr.",
)
def run(
    config_path: Path | None, nats_url: str | None, data_dir: Path | None, log_format: str
) -> None:
    """Run the control plane's workers until SIGINT or SIGTERM.

    With no NATS URL, starts the bundled nats-server on 127.0.0.1 with its
    store under the data directory, and stops it on exit.
    """
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    fmt: LogFormat = "json" if log_format == "json" else "console"
    configure_logging(fmt)
    # Exits within stop_grace + 1 s of a signal even when a worker ignores
    # its cancellation: once stopped, nothing is left to wait for.
    run_async(_serve(config), exit_if_abandoned=True)


async def _serve(config: Config) -> None:
    """Start, run until SIGINT or SIGTERM, stop; a signal during start-up stops it too."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before anything starts and kept until everything stopped: a
    # signal at any moment asks for the same orderly stop, and a second one
    # during the (bounded) stop does not cut it short.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cp = ControlPlane(config)
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
        await stop.wait()
    finally:
        try:
            await cp.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
