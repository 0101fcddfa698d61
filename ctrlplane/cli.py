"""The ``ctrlplane`` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec

from ctrlplane.actors.control import WorkersReply, list_workers
from ctrlplane.actors.errors import ActorError
from ctrlplane.app import ControlPlane
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.errors import BusError
from ctrlplane.bus.server import read_server_info
from ctrlplane.bus.subjects import Subjects
from ctrlplane.config import Config, load_config
from ctrlplane.durations import format_duration
from ctrlplane.errors import ConfigError, CtrlplaneError
from ctrlplane.logs import LogFormat, configure_logging
from ctrlplane.store.errors import StoreError

T = TypeVar("T")

# Exit codes: 2 for bad input (as click uses for usage errors), 1 for a
# failure at run time.
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"ctrlplane: {message}", err=True)
    sys.exit(code)


def _load(config: Path | None, **overrides: object) -> Config:
    try:
        return load_config(config, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CTRLPLANE_CONFIG",
    help="TOML config file (env: CTRLPLANE_CONFIG).",
)
_nats_option = click.option(
    "--nats-url",
    help="Join this NATS instead of the embedded server (env: CTRLPLANE_NATS_URL).",
)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the database and the embedded server live (env: CTRLPLANE_DATA_DIR).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctrlplane-workers", prog_name="ctrlplane")
def main() -> None:
    """ctrlplane workers: the background-worker runtime of a control plane, on NATS."""
    # Logs go to stderr, so that stdout carries only what a command prints
    # (JSON for --json); `run` raises the level to info.
    configure_logging("console", logging.WARNING)


@main.command()
@_config_option
@_nats_option
@_data_dir_option
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
    config = _load(config_path, nats_url=nats_url, data_dir=data_dir)
    fmt: LogFormat = "json" if log_format == "json" else "console"
    configure_logging(fmt)
    _run_async(_serve(config))


async def _serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cp = ControlPlane(config)
    await cp.start()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await cp.stop()


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, turning our errors into one clear line and a non-zero exit."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except (CtrlplaneError, BusError, StoreError, ActorError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


async def _connect(config: Config) -> Bus:
    """Connect to the configured NATS, or find the embedded server via the data dir."""
    bus = Bus(Subjects(config.subject_prefix), name="ctrlplane-cli")
    url, token = config.nats_url, None
    if url is None:
        info = read_server_info(config.data_dir)
        if info is None:
            raise CtrlplaneError(
                f"no embedded nats-server is running for data dir {config.data_dir}: "
                "start one with `ctrlplane run`, or pass --nats-url"
            )
        url, token = info.url, info.token
    try:
        await bus.connect(url, token=token)
    except Exception as exc:
        raise CtrlplaneError(f"cannot connect to NATS at {url}: {exc}") from exc
    return bus


async def _with_bus(config: Config, action: Callable[[Bus], Coroutine[Any, Any, T]]) -> T:
    bus = await _connect(config)
    try:
        return await action(bus)
    finally:
        await bus.close()


@main.command()
@_config_option
@_nats_option
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--wait",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds to wait for processes to answer.",
)
def workers(
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
    wait: float,
) -> None:
    """List every worker of every running process on that NATS."""
    config = _load(config_path, nats_url=nats_url, data_dir=data_dir)

    async def ask(bus: Bus) -> list[WorkersReply]:
        return await list_workers(bus, within=timedelta(seconds=wait))

    replies = _run_async(_with_bus(config, ask))
    infos = [w for r in replies for w in r.workers]
    if as_json:
        click.echo(msgspec.json.encode(infos).decode())
        return
    if not replies:
        _fail("no ctrlplane process answered on this NATS")
    _print_table(
        [
            "PROCESS",
            "WORKER",
            "KIND",
            "INTERVAL",
            "RUNNING",
            "RUNS",
            "ERRORS",
            "LAST RUN",
            "NEXT RUN",
            "LAST ERROR",
        ],
        [
            [
                w.process,
                w.name,
                w.kind.value,
                format_duration(w.interval) if w.interval else "-",
                "yes" if w.running else "no",
                str(w.run_count),
                str(w.error_count),
                _ago(w.last_run),
                _ago(w.next_run),
                (w.last_error or "")[:60],
            ]
            for w in infos
        ],
    )


def _ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    delta = (when - datetime.now(UTC)).total_seconds()
    text = format_duration(timedelta(seconds=round(abs(delta))))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        main()
